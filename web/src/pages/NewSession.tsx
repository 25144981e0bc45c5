// A new session: the repository, the first prompt. Typing the prompt sends the typing
// signal (POST /api/typing), so a sandbox is warmed up before the prompt arrives.

import { useEffect, useMemo, useState } from "preact/hooks";
import { client, type RepoView } from "../api";
import { throttle } from "../live";
import { navigate } from "../router";

const DRAFT_KEY = "hangar.draft.new";

export function NewSession({ token }: { token: string }) {
  const api = client(token);
  const [repo, setRepo] = useState(() => localStorage.getItem("hangar.lastRepo") ?? "");
  const [text, setText] = useState(() => sessionStorage.getItem(DRAFT_KEY) ?? "");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [repos, setRepos] = useState<RepoView[]>([]);
  useEffect(() => {
    // The picker offers the registered repositories; any other name or URL may be typed.
    api.repos().then(setRepos, () => setRepos([]));
  }, [token]);
  const picked = repos.find((r) => r.name === repo.trim());
  // The signal is advice: a failure to send it must not bother the person typing.
  const typing = useMemo(() => throttle(2000, () => repo.trim() && api.typing(repo.trim()).catch(() => {})), [repo, token]);

  async function submit(e: Event) {
    e.preventDefault();
    if (!repo.trim()) return setError("choose a repository (owner/name or a git URL)");
    if (!text.trim()) return setError("write what the agent should do");
    setBusy(true);
    setError(null);
    try {
      const s = await api.createSession(repo.trim(), text);
      localStorage.setItem("hangar.lastRepo", repo.trim());
      sessionStorage.removeItem(DRAFT_KEY);
      navigate(`/sessions/${encodeURIComponent(s.id)}`);
    } catch (err) {
      // The draft stays in the form (and in this tab's storage).
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  }

  return (
    <main class="page narrow">
      <h1>New session</h1>
      <form class="stack" onSubmit={submit}>
        <label for="repo">Repository</label>
        <input
          id="repo"
          name="repo"
          list="repo-list"
          placeholder="owner/name or https://…/repo.git"
          autoComplete="off"
          spellcheck={false}
          value={repo}
          onInput={(e) => setRepo((e.target as HTMLInputElement).value)}
        />
        <datalist id="repo-list" data-testid="repo-list">
          {repos.map((r) => (
            <option value={r.name}>{r.description || r.url}</option>
          ))}
        </datalist>
        {picked ? (
          <p class="hint">
            {picked.description || picked.url} · from {picked.default_branch}
          </p>
        ) : (
          repos.length > 0 && repo.trim() && <p class="hint">Not a registered repository: the session works in a plain directory.</p>
        )}
        <label for="prompt">What should the agent do?</label>
        <textarea
          id="prompt"
          name="prompt"
          rows={6}
          value={text}
          onInput={(e) => {
            const v = (e.target as HTMLTextAreaElement).value;
            setText(v);
            sessionStorage.setItem(DRAFT_KEY, v);
            typing();
          }}
        />
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          Start
        </button>
      </form>
    </main>
  );
}
