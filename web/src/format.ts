// Small formatting for people.

/** "just now", "5 min ago", "3 h ago", or the date. */
export function ago(ms: number, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toISOString().slice(0, 10);
}

/** A tool call's input in one line. */
export function toolSummary(tool: string, input: unknown): string {
  if (input && typeof input === "object") {
    const o = input as Record<string, unknown>;
    for (const k of ["command", "cmd", "path", "pattern", "query"]) {
      if (typeof o[k] === "string") return `${tool} ${o[k] as string}`;
      if (Array.isArray(o[k])) return `${tool} ${(o[k] as unknown[]).join(" ")}`;
    }
    const s = JSON.stringify(input);
    return s === "{}" ? tool : `${tool} ${s.length > 120 ? s.slice(0, 117) + "…" : s}`;
  }
  return input === undefined || input === null ? tool : `${tool} ${String(input)}`;
}

/** A size in bytes for people: "512 B", "1.5 KiB", "3.2 MiB". */
export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** A duration for people: "850 ms", "12 s", "3 min 5 s", "2 h 10 min". */
export function duration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ""}`;
  const m = Math.round(s / 60);
  return `${Math.floor(m / 60)} h${m % 60 ? ` ${m % 60} min` : ""}`;
}

/** A share (0..1) as a percentage, or "–" when unknown. */
export function percent(x: number | null | undefined): string {
  return x === null || x === undefined ? "–" : `${Math.round(x * 100)}%`;
}
