// The session's WebSocket: connects with `after_seq` = the last seq applied, folds every
// message into the state, and reconnects after a drop without losing or repeating an
// event (the server resends everything after that seq).

import type { ClientMessage, ServerMessage } from "./protocol";
import { apply, emptyState, type SessionState } from "./session_state";

/** Close codes after which reconnecting cannot help. */
const FINAL_CLOSES = new Set([1003, 1007, 1008, 1009]);

/** The connection's state, for the UI. */
export type LinkState = "connecting" | "live" | "reconnecting" | "closed";

/** The WebSocket URL of a session, resuming after `afterSeq`. */
export function wsUrl(base: string, sessionId: string, afterSeq: number, token: string): string {
  const u = new URL(`/api/sessions/${encodeURIComponent(sessionId)}/ws`, base);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  u.searchParams.set("after_seq", String(afterSeq));
  u.searchParams.set("token", token);
  return u.toString();
}

/** Delay before reconnect attempt `n` (0-based): 0.25 s doubling up to 5 s. */
export function backoffMs(n: number): number {
  return Math.min(5000, 250 * 2 ** Math.min(n, 5));
}

/** A live session: its state and the socket that feeds it. */
export class LiveSession {
  readonly state: SessionState = emptyState();
  link: LinkState = "connecting";
  /** Why the link is down, when it is. */
  linkError?: string;
  private ws?: WebSocket;
  private attempts = 0;
  private timer?: ReturnType<typeof setTimeout>;
  private closed = false;
  private listeners = new Set<() => void>();
  private queued = false;

  constructor(
    private readonly sessionId: string,
    private readonly token: string,
    /** Asked why a connection failed (the browser hides the HTTP answer of a refused
     * upgrade): resolves to a message, or null when the session is reachable. */
    private readonly diagnose: () => Promise<string | null>,
  ) {
    this.connect();
  }

  /** Calls `fn` after changes (batched per animation frame). */
  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private changed() {
    if (this.queued) return;
    this.queued = true;
    const flush = () => {
      this.queued = false;
      for (const fn of this.listeners) fn();
    };
    if (typeof requestAnimationFrame === "function" && document.visibilityState === "visible") {
      requestAnimationFrame(flush);
    } else {
      setTimeout(flush, 16);
    }
  }

  private connect() {
    if (this.closed) return;
    const ws = new WebSocket(wsUrl(location.href, this.sessionId, this.state.lastSeq, this.token));
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.attempts = 0;
      this.link = "live";
      this.linkError = undefined;
      this.send({ type: "presence", state: document.visibilityState === "visible" ? "viewing" : "away" });
      this.changed();
    };
    ws.onmessage = (m) => {
      if (typeof m.data !== "string") return;
      let msg: ServerMessage;
      try {
        msg = JSON.parse(m.data) as ServerMessage;
      } catch {
        return;
      }
      apply(this.state, msg);
      this.changed();
    };
    ws.onclose = async (ev) => {
      if (this.ws !== ws || this.closed) return;
      this.ws = undefined;
      if (FINAL_CLOSES.has(ev.code)) {
        this.link = "closed";
        this.linkError = `the server closed the stream (${ev.code}${ev.reason ? ": " + ev.reason : ""})`;
        this.changed();
        return;
      }
      if (!opened) {
        const why = await this.diagnose().catch(() => null);
        if (why) {
          this.link = "closed";
          this.linkError = why;
          this.changed();
          return;
        }
      }
      this.link = "reconnecting";
      this.linkError = ev.reason || undefined;
      this.changed();
      this.timer = setTimeout(() => this.connect(), backoffMs(this.attempts++));
    };
  }

  /** Sends a message if the socket is open; returns whether it was sent. */
  send(msg: ClientMessage): boolean {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** Closes the socket for good. */
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.ws?.close(1000);
    this.listeners.clear();
  }
}

/** Sends at most one typing signal per `everyMs`. */
export function throttle(everyMs: number, fn: () => void): () => void {
  let last = -Infinity;
  return () => {
    const now = Date.now();
    if (now - last >= everyMs) {
      last = now;
      fn();
    }
  };
}
