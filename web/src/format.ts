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
