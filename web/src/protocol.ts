// The session wire types, as defined in `crates/protocol/src/session.rs` (see
// docs/sessions.md). `protocol.fixture.json` holds one message of every kind; the
// protocol crate's tests decode it with the Rust types and this side's tests read it
// with these, so the two cannot drift apart unnoticed.

/** A prompt's author: a user, or a guest who came through a share link. */
export interface Author {
  user_id: number | null;
  login: string;
  share_id?: number;
}

/** A prompt and its state. */
export interface Prompt {
  id: number;
  author: Author;
  text: string;
  status: "queued" | "running" | "done" | "stopped" | "failed" | "cancelled" | "interrupted";
  created_at_ms: number;
}

/** Every logged event's body, by type. */
export type EventBody =
  | { type: "prompt.queued"; data: { prompt: Prompt } }
  | { type: "prompt.started"; data: { prompt_id: number; author: Author } }
  | { type: "prompt.finished"; data: { prompt_id: number; outcome: string; error?: string } }
  | { type: "model.delta"; data: { prompt_id: number; text: string } }
  | { type: "tool.started"; data: { prompt_id: number; call_id: string; tool: string; input: unknown } }
  | { type: "tool.output"; data: { call_id: string; stream: "stdout" | "stderr"; text: string } }
  | { type: "tool.finished"; data: { call_id: string; ok: boolean; exit_code?: number } }
  | { type: "file.changed"; data: { path: string; change: "created" | "modified" | "deleted" } }
  | { type: "status"; data: { status: "idle" | "running" | "interrupted" } }
  | { type: "participant.joined"; data: { participant: Author } }
  | { type: "participant.left"; data: { participant: Author } }
  | { type: "queue.updated"; data: { queue: Prompt[] } }
  | {
      type: "git.committed";
      data: { branch: string; commit: string; author: string; author_email: string; co_authors?: string[] };
    }
  | { type: "git.push_failed"; data: { branch: string; reason: string } }
  | { type: "git.pushed"; data: { branch: string; commit: string } }
  | { type: "pr.opened"; data: { number: number; url: string; title: string } }
  | { type: "pr.updated"; data: { number: number; url: string; state: string } }
  | {
      type: "pr.reviewed";
      data: { number: number; url: string; reviewer: string; state: string; body?: string };
    }
  | {
      type: "pr.review_comment";
      data: { number: number; url: string; author: string; path: string; line?: number; body: string };
    }
  | { type: "session.spawned"; data: { session_id: string; repo: string } }
  | { type: "snapshot.taken"; data: { image: string } }
  | { type: "snapshot.failed"; data: { reason: string } }
  | { type: "sandbox.restored"; data: { reason: string; snapshot?: string } };

/** A logged event. */
export type SessionEvent = EventBody & { seq: number; at: string };

/** One connected participant. */
export interface PresenceEntry {
  participant: Author;
  connections: number;
  typing: boolean;
  state?: string;
}

/** Live presence (never logged, no seq). */
export interface PresenceUpdate {
  type: "presence";
  at: string;
  data: { participants: PresenceEntry[] };
}

/** A refusal of a client message; the connection stays open. */
export interface ErrorMessage {
  type: "error";
  error: { code: string; message: string };
}

/** Anything the server sends over the session WebSocket. */
export type ServerMessage = SessionEvent | PresenceUpdate | ErrorMessage;

/** What a client sends over the session WebSocket. */
export type ClientMessage =
  | { type: "typing" }
  | { type: "presence"; state?: string }
  | { type: "prompt"; text: string };

/** The event types the UI understands (every `EventBody` type). */
export const EVENT_TYPES: ReadonlyArray<EventBody["type"]> = [
  "prompt.queued",
  "prompt.started",
  "prompt.finished",
  "model.delta",
  "tool.started",
  "tool.output",
  "tool.finished",
  "file.changed",
  "status",
  "participant.joined",
  "participant.left",
  "queue.updated",
  "git.committed",
  "git.push_failed",
  "git.pushed",
  "pr.opened",
  "pr.updated",
  "pr.reviewed",
  "pr.review_comment",
  "session.spawned",
  "snapshot.taken",
  "snapshot.failed",
  "sandbox.restored",
];
