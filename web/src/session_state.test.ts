import { describe, expect, it } from "vitest";
import fixture from "./protocol.fixture.json";
import { EVENT_TYPES, type ServerMessage } from "./protocol";
import { apply, emptyState, typingOthers } from "./session_state";

const messages = fixture as ServerMessage[];

describe("the session state", () => {
  it("covers every event type the protocol defines", () => {
    const seen = new Set(messages.map((m) => m.type));
    for (const t of EVENT_TYPES) expect(seen, t).toContain(t);
  });

  it("folds a whole stream into turns, tools, queue, files, PRs and presence", () => {
    const s = emptyState();
    for (const m of messages) apply(s, m);
    expect(s.lastSeq).toBe(32);
    expect(s.status).toBe("idle");
    expect(s.turns.map((t) => [t.promptId, t.author?.login, t.text, t.state])).toEqual([
      [1, "alice", "fix the test", "stopped"],
      [2, "share-4", "also the docs", "failed"],
    ]);
    const [first] = s.turns;
    expect(first.items[0]).toEqual({ kind: "text", text: "Looking at it." });
    const tool = first.items[1];
    expect(tool.kind).toBe("tool");
    if (tool.kind === "tool") {
      expect(tool.call).toMatchObject({ tool: "shell", output: "running 1 test\nfailed\n", ok: false, exitCode: 101 });
    }
    expect(s.turns[1].error).toBe("the script asked to fail");
    expect(s.queue).toEqual([]);
    expect(s.files.get("src/lib.rs")).toBe("modified");
    expect(s.prs).toEqual([{ number: 7, url: "https://github.com/acme/app/pull/7", title: "Fix the test", state: "merged" }]);
    expect(s.pushes[0].branch).toBe("hangar/fix-test");
    expect(s.commits).toEqual([
      { branch: "hangar/fix-test", commit: "0123456789abcdef0123456789abcdef01234567", author: "Alice", coAuthors: ["Bob"] },
    ]);
    expect(s.pushFailed).toBeUndefined();
    expect(s.reviews.map((r) => [r.number, r.who, r.what])).toEqual([
      [7, "carol", "changes requested"],
      [7, "carol", "commented on src/lib.rs:12"],
    ]);
    expect(s.spawned).toEqual([{ sessionId: "s_child", repo: "acme/lib" }]);
    expect(s.snapshot).toBe("0123456789ab");
    expect(s.sandboxNotice).toBe("the server restarted: a new sandbox started from the image and the session's branch");
    expect(s.participants[0].participant.login).toBe("bob");
    expect(typingOthers(s, () => false)).toEqual(["bob"]);
    expect(typingOthers(s, (a) => a.login === "bob")).toEqual([]);
  });

  it("ignores events it already applied, so a resumed stream repeats nothing", () => {
    const once = emptyState();
    for (const m of messages) apply(once, m);
    const twice = emptyState();
    for (const m of messages.slice(0, 10)) apply(twice, m);
    // A reconnect resends from after_seq = lastSeq, but a duplicate must still be harmless.
    for (const m of messages.slice(5)) apply(twice, m);
    expect(twice.turns).toEqual(once.turns);
    expect(apply(twice, messages[3])).toBe(false);
  });

  it("shows the queue while a prompt waits and keeps socket refusals", () => {
    const s = emptyState();
    for (const m of messages.slice(0, 14)) apply(s, m);
    expect(s.queue.map((p) => [p.id, p.author.login, p.text])).toEqual([[2, "share-4", "also the docs"]]);
    apply(s, { type: "error", error: { code: "invalid_request", message: "a prompt may not be empty" } });
    expect(s.error).toBe("a prompt may not be empty");
  });
});
