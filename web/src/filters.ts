// The sessions list's filters, as a pure function.

import type { SessionView } from "./api";

/** What to keep: empty fields keep everything. */
export interface SessionFilter {
  /** A part of the repository's name, case-insensitive. */
  repo: string;
  /** The creator's login. */
  author: string;
  /** `idle`, `running` or `interrupted`. */
  status: string;
}

/** The sessions that pass `f`, in their order. */
export function filterSessions(list: SessionView[], f: SessionFilter): SessionView[] {
  const repo = f.repo.trim().toLowerCase();
  return list.filter(
    (s) =>
      (!repo || s.repo.toLowerCase().includes(repo)) &&
      (!f.author || (s.created_by_login ?? `user ${s.created_by}`) === f.author) &&
      (!f.status || s.status === f.status),
  );
}
