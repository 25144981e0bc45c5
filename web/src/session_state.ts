// What a session looks like, folded from its event stream. Pure: `apply` takes a message
// and updates the state; the tests drive it with recorded streams.

import type { Author, PresenceEntry, Prompt, ServerMessage } from "./protocol";

/** A tool call and everything it printed. */
export interface ToolCall {
  callId: string;
  tool: string;
  input: unknown;
  output: string;
  /** Set once finished. */
  ok?: boolean;
  exitCode?: number;
}

/** One piece of a turn, in the order it happened. */
export type TurnItem = { kind: "text"; text: string } | { kind: "tool"; call: ToolCall };

/** One prompt and the agent's work on it. */
export interface Turn {
  promptId: number;
  author?: Author;
  text: string;
  items: TurnItem[];
  /** `running` until finished, then the outcome (`done`, `stopped`, `failed`, `interrupted`). */
  state: string;
  error?: string;
}

/** A pull request the session opened. */
export interface PullRequest {
  number: number;
  url: string;
  title: string;
  state: string;
}

/** The session as the UI shows it. */
export interface SessionState {
  /** The last seq applied; the WebSocket resumes after it. */
  lastSeq: number;
  status: string;
  /** Turns that started, oldest first. */
  turns: Turn[];
  /** Prompts waiting, next first. */
  queue: Prompt[];
  participants: PresenceEntry[];
  files: Map<string, string>;
  pushes: { branch: string; commit: string }[];
  /** Commits on the session's branch, oldest first. */
  commits: { branch: string; commit: string; author: string; coAuthors: string[] }[];
  /** Why the last push failed, until a push succeeds. */
  pushFailed?: string;
  prs: PullRequest[];
  /** Reviews and review comments on the pull requests, oldest first. */
  reviews: { number: number; url: string; who: string; what: string; body?: string }[];
  spawned: { sessionId: string; repo: string }[];
  /** The latest snapshot of the session's sandbox (an image id). */
  snapshot?: string;
  /** What last happened to the session's sandbox: a failed snapshot, a restore. */
  sandboxNotice?: string;
  /** Prompt texts and authors by id, from `prompt.queued`. */
  prompts: Map<number, Prompt>;
  /** Tool calls by id. */
  calls: Map<string, ToolCall>;
  /** The last refusal the server sent over the socket. */
  error?: string;
}

/** A session before any event. */
export function emptyState(): SessionState {
  return {
    lastSeq: 0,
    status: "idle",
    turns: [],
    queue: [],
    participants: [],
    files: new Map(),
    pushes: [],
    commits: [],
    prs: [],
    reviews: [],
    spawned: [],
    prompts: new Map(),
    calls: new Map(),
  };
}

function turnFor(s: SessionState, promptId: number): Turn {
  let turn = s.turns.find((t) => t.promptId === promptId);
  if (!turn) {
    const p = s.prompts.get(promptId);
    turn = { promptId, author: p?.author, text: p?.text ?? "", items: [], state: "running" };
    s.turns.push(turn);
  }
  return turn;
}

/** Applies one server message. Returns false when it was already applied (a seq at or
 * below `lastSeq`, e.g. after a reconnect), true otherwise. */
export function apply(s: SessionState, msg: ServerMessage): boolean {
  if (msg.type === "presence") {
    s.participants = msg.data.participants;
    return true;
  }
  if (msg.type === "error") {
    s.error = msg.error.message;
    return true;
  }
  if (msg.seq <= s.lastSeq) return false;
  s.lastSeq = msg.seq;
  switch (msg.type) {
    case "prompt.queued":
      s.prompts.set(msg.data.prompt.id, msg.data.prompt);
      break;
    case "prompt.started": {
      const turn = turnFor(s, msg.data.prompt_id);
      turn.author = msg.data.author;
      turn.state = "running";
      s.queue = s.queue.filter((p) => p.id !== msg.data.prompt_id);
      break;
    }
    case "prompt.finished": {
      const known = s.turns.find((t) => t.promptId === msg.data.prompt_id);
      if (known) {
        known.state = msg.data.outcome;
        known.error = msg.data.error;
      }
      break;
    }
    case "model.delta": {
      const turn = turnFor(s, msg.data.prompt_id);
      const last = turn.items[turn.items.length - 1];
      if (last?.kind === "text") last.text += msg.data.text;
      else turn.items.push({ kind: "text", text: msg.data.text });
      break;
    }
    case "tool.started": {
      const call: ToolCall = { callId: msg.data.call_id, tool: msg.data.tool, input: msg.data.input, output: "" };
      s.calls.set(call.callId, call);
      turnFor(s, msg.data.prompt_id).items.push({ kind: "tool", call });
      break;
    }
    case "tool.output": {
      const call = s.calls.get(msg.data.call_id);
      if (call) call.output += msg.data.text;
      break;
    }
    case "tool.finished": {
      const call = s.calls.get(msg.data.call_id);
      if (call) {
        call.ok = msg.data.ok;
        call.exitCode = msg.data.exit_code;
      }
      break;
    }
    case "file.changed":
      s.files.set(msg.data.path, msg.data.change);
      break;
    case "status":
      s.status = msg.data.status;
      break;
    case "participant.joined":
    case "participant.left":
      // Presence carries the live list; the log keeps these moments for history.
      break;
    case "queue.updated":
      s.queue = msg.data.queue;
      for (const p of msg.data.queue) s.prompts.set(p.id, p);
      break;
    case "git.committed":
      s.commits.push({
        branch: msg.data.branch,
        commit: msg.data.commit,
        author: msg.data.author,
        coAuthors: msg.data.co_authors ?? [],
      });
      break;
    case "git.push_failed":
      s.pushFailed = `push of ${msg.data.branch} failed: ${msg.data.reason}`;
      break;
    case "git.pushed":
      s.pushes.push({ branch: msg.data.branch, commit: msg.data.commit });
      s.pushFailed = undefined;
      break;
    case "pr.opened":
      s.prs.push({ number: msg.data.number, url: msg.data.url, title: msg.data.title, state: "open" });
      break;
    case "pr.updated": {
      const pr = s.prs.find((p) => p.number === msg.data.number);
      if (pr) pr.state = msg.data.state;
      else s.prs.push({ number: msg.data.number, url: msg.data.url, title: "", state: msg.data.state });
      break;
    }
    case "pr.reviewed":
      s.reviews.push({
        number: msg.data.number,
        url: msg.data.url,
        who: msg.data.reviewer,
        what: msg.data.state.replace("_", " "),
        body: msg.data.body,
      });
      break;
    case "pr.review_comment":
      s.reviews.push({
        number: msg.data.number,
        url: msg.data.url,
        who: msg.data.author,
        what: `commented on ${msg.data.path}${msg.data.line === undefined ? "" : `:${msg.data.line}`}`,
        body: msg.data.body,
      });
      break;
    case "session.spawned":
      s.spawned.push({ sessionId: msg.data.session_id, repo: msg.data.repo });
      break;
    case "snapshot.taken":
      s.snapshot = msg.data.image;
      break;
    case "snapshot.failed":
      s.sandboxNotice = `snapshot failed: ${msg.data.reason}`;
      break;
    case "sandbox.restored":
      s.sandboxNotice =
        msg.data.snapshot === undefined
          ? `${msg.data.reason}: a new sandbox started from the image and the session's branch`
          : `${msg.data.reason}: a new sandbox restored from snapshot ${msg.data.snapshot}`;
      break;
  }
  return true;
}

/** Who is typing, other than `me`. */
export function typingOthers(s: SessionState, me: (a: Author) => boolean): string[] {
  return s.participants.filter((p) => p.typing && !me(p.participant)).map((p) => p.participant.login);
}
