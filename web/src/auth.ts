// Who the browser is: a user's API token (kept in localStorage), or a share link's token
// for one session (from the link's `#share=` fragment, kept for this tab only). The
// fragment never reaches the server's logs.

const USER_KEY = "hangar.token";
const shareKey = (sessionId: string) => `hangar.share.${sessionId}`;

/** A parsed share link: it opens one session or one environment (`sessionId` is the id
 * of either; they never collide). */
export interface ShareLink {
  kind: "session" | "env";
  sessionId: string;
  token: string;
}

/** The share link's path and fragment for `sessionId`. */
export function shareUrl(origin: string, sessionId: string, token: string): string {
  return `${origin}/sessions/${encodeURIComponent(sessionId)}#share=${encodeURIComponent(token)}`;
}

/** Reads a share link (`…/sessions/ID#share=hgs_…` or `…/envs/ID#share=hgs_…`), or null. */
export function parseShareLink(text: string): ShareLink | null {
  let u: URL;
  try {
    u = new URL(text.trim(), "http://localhost");
  } catch {
    return null;
  }
  const m = /^\/(sessions|envs)\/([^/]+)\/?$/.exec(u.pathname);
  const token = new URLSearchParams(u.hash.replace(/^#/, "")).get("share");
  if (!m || !token || !token.startsWith("hgs_")) return null;
  return { kind: m[1] === "envs" ? "env" : "session", sessionId: decodeURIComponent(m[2]), token };
}

/** What a pasted sign-in text is: an API token, a share link, or neither (with why). */
export function classifySignIn(text: string): { kind: "token"; token: string } | { kind: "share"; link: ShareLink } | { kind: "bad"; message: string } {
  const t = text.trim();
  if (!t) return { kind: "bad", message: "paste an API token (hgr_…) or a share link" };
  const link = parseShareLink(t);
  if (link) return { kind: "share", link };
  if (t.startsWith("hgs_")) {
    return { kind: "bad", message: "that is a share token alone: open the whole share link instead" };
  }
  if (/\s/.test(t)) return { kind: "bad", message: "a token has no spaces: paste just the token" };
  return { kind: "token", token: t };
}

/** The user's API token, if signed in. */
export function userToken(): string | null {
  return localStorage.getItem(USER_KEY);
}

/** Keeps the user's token. */
export function setUserToken(token: string | null) {
  if (token) localStorage.setItem(USER_KEY, token);
  else localStorage.removeItem(USER_KEY);
}

/** The share token this tab holds for `sessionId`, if any. */
export function shareToken(sessionId: string): string | null {
  return sessionStorage.getItem(shareKey(sessionId));
}

/** Keeps a share link's token for this tab. */
export function setShareToken(link: { sessionId: string; token: string | null }) {
  if (link.token) sessionStorage.setItem(shareKey(link.sessionId), link.token);
  else sessionStorage.removeItem(shareKey(link.sessionId));
}

/** The token to use for `sessionId`: this tab's share token for it, else the user's. */
export function tokenFor(sessionId: string): string | null {
  return shareToken(sessionId) ?? userToken();
}
