// The environment terminal's wire format (`GET /api/environments/{id}/ws`): binary frames
// carry the PTY's bytes both ways; text frames carry JSON control messages.

/** What the server sends as text. */
export type TerminalServerMessage =
  | { type: "presence"; participants: { login: string; terminals: number }[] }
  | { type: "exit"; code: number | null }
  | { type: "error"; error: { code: string; message: string } };

/** What the client sends as text. */
export type TerminalClientMessage = { type: "resize"; cols: number; rows: number };

/** The terminal WebSocket's URL for environment `id`, at this size. */
export function terminalUrl(base: string, id: string, token: string, cols: number, rows: number): string {
  const u = new URL(`/api/environments/${encodeURIComponent(id)}/ws`, base);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  u.searchParams.set("cols", String(cols));
  u.searchParams.set("rows", String(rows));
  u.searchParams.set("token", token);
  return u.toString();
}
