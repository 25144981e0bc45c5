import { describe, expect, it } from "vitest";
import { classifySignIn, parseShareLink, shareUrl } from "./auth";
import { filterSessions } from "./filters";
import { backoffMs, wsUrl } from "./live";
import { route } from "./router";
import { terminalUrl } from "./terminal";
import { toolSummary } from "./format";
import type { SessionView } from "./api";

describe("sign-in", () => {
  it("reads a share link back from the URL it makes", () => {
    const url = shareUrl("https://hangar.example", "s_1", "hgs_abc");
    expect(url).toBe("https://hangar.example/sessions/s_1#share=hgs_abc");
    expect(parseShareLink(url)).toEqual({ kind: "session", sessionId: "s_1", token: "hgs_abc" });
    expect(parseShareLink("/sessions/s_1#share=hgs_abc")).toEqual({ kind: "session", sessionId: "s_1", token: "hgs_abc" });
    expect(parseShareLink("http://h/envs/env-1#share=hgs_e")).toEqual({ kind: "env", sessionId: "env-1", token: "hgs_e" });
  });
  it("refuses what is not a share link", () => {
    expect(parseShareLink("https://x/sessions/s_1")).toBeNull();
    expect(parseShareLink("https://x/sessions/s_1#share=hgr_api")).toBeNull();
    expect(parseShareLink("https://x/other/s_1#share=hgs_a")).toBeNull();
    expect(parseShareLink("http://[bad")).toBeNull();
  });
  it("tells what a pasted text is and why it cannot be used", () => {
    expect(classifySignIn("  hgr_123 ")).toEqual({ kind: "token", token: "hgr_123" });
    expect(classifySignIn("http://h/sessions/s#share=hgs_1").kind).toBe("share");
    expect(classifySignIn("")).toMatchObject({ kind: "bad" });
    expect(classifySignIn("hgs_only")).toMatchObject({ kind: "bad", message: expect.stringContaining("share link") });
    expect(classifySignIn("hgr_1 hgr_2")).toMatchObject({ kind: "bad" });
  });
});

describe("routes", () => {
  it("maps paths to pages", () => {
    expect(route("/")).toEqual({ page: "sessions" });
    expect(route("/sessions/new")).toEqual({ page: "new-session" });
    expect(route("/sessions/s_a%20b/")).toEqual({ page: "session", id: "s_a b" });
    expect(route("/envs/e1")).toEqual({ page: "env", id: "e1" });
    expect(route("/nope")).toEqual({ page: "not-found", path: "/nope" });
  });
  it("only returns to pages of this site after signing in", () => {
    expect(route("/sign-in", "?next=/sessions/x")).toEqual({ page: "sign-in", next: "/sessions/x" });
    expect(route("/sign-in", "?next=//evil.example")).toEqual({ page: "sign-in", next: "/" });
    expect(route("/sign-in", "?next=https://evil.example")).toEqual({ page: "sign-in", next: "/" });
  });
});

describe("the WebSocket", () => {
  it("resumes after the last seq, with the token in the query", () => {
    expect(wsUrl("https://h.example/sessions/s", "s 1", 42, "hgr_x")).toBe(
      "wss://h.example/api/sessions/s%201/ws?after_seq=42&token=hgr_x",
    );
    expect(wsUrl("http://127.0.0.1:7070/", "s", 0, "t")).toBe("ws://127.0.0.1:7070/api/sessions/s/ws?after_seq=0&token=t");
    expect(terminalUrl("http://h/envs/e", "e", "t", 80, 24)).toBe("ws://h/api/environments/e/ws?cols=80&rows=24&token=t");
  });
  it("backs off up to five seconds", () => {
    expect([0, 1, 2, 3, 4, 5, 9].map(backoffMs)).toEqual([250, 500, 1000, 2000, 4000, 5000, 5000]);
  });
});

describe("the sessions list", () => {
  const s = (id: string, repo: string, login: string, status: string): SessionView => ({
    id,
    repo,
    title: id,
    status,
    created_by: 1,
    created_by_login: login,
    created_at_ms: 0,
    updated_at_ms: 0,
  });
  const list = [s("a", "acme/app", "alice", "running"), s("b", "acme/lib", "bob", "idle"), s("c", "Acme/App2", "bob", "running")];
  it("filters by repository, author and status together", () => {
    const f = (repo: string, author: string, status: string) => filterSessions(list, { repo, author, status }).map((x) => x.id);
    expect(f("", "", "")).toEqual(["a", "b", "c"]);
    expect(f("acme/app", "", "")).toEqual(["a", "c"]);
    expect(f("", "bob", "")).toEqual(["b", "c"]);
    expect(f("app", "bob", "running")).toEqual(["c"]);
    expect(f("", "", "interrupted")).toEqual([]);
  });
});

describe("tool summaries", () => {
  it("show the command or path", () => {
    expect(toolSummary("shell", { command: "ls -la" })).toBe("shell ls -la");
    expect(toolSummary("read", { path: "src/a.rs" })).toBe("read src/a.rs");
    expect(toolSummary("git_status", {})).toBe("git_status");
    expect(toolSummary("x", null)).toBe("x");
  });
});

describe("figures for people", () => {
  it("formats sizes, durations and shares", async () => {
    const { bytes, duration, percent } = await import("./format");
    expect([0, 1023, 1536, 5 * 1024 * 1024, 300 * 1024 * 1024].map(bytes)).toEqual(["0 B", "1023 B", "1.5 KiB", "5.0 MiB", "300 MiB"]);
    expect([850, 12_000, 185_000, 7_800_000].map(duration)).toEqual(["850 ms", "12 s", "3 min 5 s", "2 h 10 min"]);
    expect([null, 0, 0.256, 1].map(percent)).toEqual(["–", "0%", "26%", "100%"]);
  });
});

describe("new pages", () => {
  it("routes images, builds and stats", () => {
    expect(route("/images")).toEqual({ page: "images" });
    expect(route("/images/builds/bld-0a1b")).toEqual({ page: "build", id: "bld-0a1b" });
    expect(route("/stats/")).toEqual({ page: "stats" });
    expect(route("/images/builds")).toEqual({ page: "not-found", path: "/images/builds" });
  });
});

describe("images", () => {
  it("groups images by registered repository, the current one first", async () => {
    const { groupImages } = await import("./pages/Images");
    const img = (id: string, repo: string | null, current: boolean, created: string) =>
      ({ id, digest: "sha256:" + id, repo, commit: null, base: "host", created, size: 1, layers: 1, current });
    const groups = groupImages(
      [img("a", "/git/app", false, "2026-01-02"), img("b", "/git/app", true, "2026-01-01"), img("c", null, false, "2026-01-01"), img("d", "/git/other", false, "2026-01-01")],
      [{ name: "acme/app", url: "/git/app", default_branch: "main", description: "" }],
    );
    expect(groups.map(([k, l]) => [k, l.map((i) => i.id)])).toEqual([
      ["/git/other", ["d"]],
      ["acme/app", ["b", "a"]],
      ["base images", ["c"]],
    ]);
  });
});
