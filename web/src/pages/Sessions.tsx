// The sessions list, filtered by repository, author and status (in the address, so a
// filtered list can be shared).

import { useEffect, useMemo, useState } from "preact/hooks";
import { client, type Me, type SessionView } from "../api";
import { linkClick, navigate } from "../router";
import { filterSessions, type SessionFilter } from "../filters";
import { ago } from "../format";

export function Sessions({ token, me }: { token: string; me: Me | null }) {
  const [list, setList] = useState<SessionView[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const params = new URLSearchParams(location.search);
  const [filter, setFilter] = useState<SessionFilter>({
    repo: params.get("repo") ?? "",
    author: params.get("author") ?? "",
    status: params.get("status") ?? "",
  });

  useEffect(() => {
    let live = true;
    const load = () =>
      client(token)
        .sessions()
        .then((l) => live && (setList(l), setError(null)))
        .catch((e: Error) => live && setError(e.message));
    load();
    const timer = setInterval(load, 5000);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, [token]);

  function update(k: keyof SessionFilter, v: string) {
    const f = { ...filter, [k]: v };
    setFilter(f);
    const q = new URLSearchParams(Object.entries(f).filter(([, v]) => v) as [string, string][]).toString();
    history.replaceState(null, "", q ? `/?${q}` : "/");
  }

  const shown = useMemo(() => (list ? filterSessions(list, filter) : []), [list, filter]);
  const repos = useMemo(() => [...new Set((list ?? []).map((s) => s.repo))].sort(), [list]);
  const authors = useMemo(
    () => [...new Set((list ?? []).map((s) => s.created_by_login ?? `user ${s.created_by}`))].sort(),
    [list],
  );

  return (
    <main class="page">
      <div class="row between">
        <h1>Sessions</h1>
        <button onClick={() => navigate("/sessions/new")}>New session</button>
      </div>
      <div class="filters" role="search">
        <label>
          Repository
          <input list="repos" name="repo" value={filter.repo} onInput={(e) => update("repo", (e.target as HTMLInputElement).value)} />
          <datalist id="repos">
            {repos.map((r) => (
              <option value={r} />
            ))}
          </datalist>
        </label>
        <label>
          Author
          <select name="author" value={filter.author} onChange={(e) => update("author", (e.target as HTMLSelectElement).value)}>
            <option value="">anyone</option>
            {me && <option value={me.login}>me ({me.login})</option>}
            {authors
              .filter((a) => a !== me?.login)
              .map((a) => (
                <option value={a}>{a}</option>
              ))}
          </select>
        </label>
        <label>
          Status
          <select name="status" value={filter.status} onChange={(e) => update("status", (e.target as HTMLSelectElement).value)}>
            <option value="">any</option>
            <option value="running">running</option>
            <option value="idle">idle</option>
            <option value="interrupted">interrupted</option>
          </select>
        </label>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {list === null && !error && <p class="hint">Loading…</p>}
      {list && shown.length === 0 && (
        <p class="hint">{list.length === 0 ? "No sessions yet: start one with New session." : "No session matches these filters."}</p>
      )}
      <ul class="sessions" data-testid="sessions">
        {shown.map((s) => (
          <li>
            <a href={`/sessions/${encodeURIComponent(s.id)}`} onClick={linkClick}>
              <span class="title">{s.title || "(untitled)"}</span>
              <span class="meta">
                <span class={`badge ${s.status}`}>{s.status}</span> {s.repo} · {s.created_by_login ?? `user ${s.created_by}`} ·{" "}
                {ago(s.updated_at_ms)}
              </span>
            </a>
          </li>
        ))}
      </ul>
    </main>
  );
}
