// Routes: the page for a path, and navigation without reloads.

/** A page and its parameters. */
export type Route =
  | { page: "sign-in"; next: string }
  | { page: "sessions" }
  | { page: "new-session" }
  | { page: "session"; id: string }
  | { page: "envs" }
  | { page: "env"; id: string }
  | { page: "images" }
  | { page: "build"; id: string }
  | { page: "stats" }
  | { page: "not-found"; path: string };

/** The route of `path` (and its query string). */
export function route(path: string, search = ""): Route {
  const p = path.replace(/\/+$/, "") || "/";
  if (p === "/sign-in") {
    const next = new URLSearchParams(search).get("next");
    return { page: "sign-in", next: next && next.startsWith("/") && !next.startsWith("//") ? next : "/" };
  }
  if (p === "/" || p === "/sessions") return { page: "sessions" };
  if (p === "/sessions/new") return { page: "new-session" };
  if (p === "/envs") return { page: "envs" };
  if (p === "/images") return { page: "images" };
  if (p === "/stats") return { page: "stats" };
  let m = /^\/sessions\/([^/]+)$/.exec(p);
  if (m) return { page: "session", id: decodeURIComponent(m[1]) };
  m = /^\/envs\/([^/]+)$/.exec(p);
  if (m) return { page: "env", id: decodeURIComponent(m[1]) };
  m = /^\/images\/builds\/([^/]+)$/.exec(p);
  if (m) return { page: "build", id: decodeURIComponent(m[1]) };
  return { page: "not-found", path };
}

const listeners = new Set<() => void>();

/** Goes to `to` (a path within the UI). */
export function navigate(to: string, replace = false) {
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  for (const fn of listeners) fn();
}

/** Calls `fn` whenever the location changes. */
export function onNavigate(fn: () => void): () => void {
  listeners.add(fn);
  const pop = () => fn();
  window.addEventListener("popstate", pop);
  return () => {
    listeners.delete(fn);
    window.removeEventListener("popstate", pop);
  };
}

/** Click handler for in-app links: navigates without a reload (plain clicks only). */
export function linkClick(e: MouseEvent) {
  const a = (e.currentTarget as HTMLAnchorElement | null) ?? null;
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(a.getAttribute("href") ?? "/");
}
