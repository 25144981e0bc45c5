// Sign-in: paste an API token (checked with GET /api/me), or a share link.

import { useState } from "preact/hooks";
import { client } from "../api";
import { classifySignIn, setShareToken, setUserToken } from "../auth";
import { navigate } from "../router";

export function SignIn({ next }: { next: string }) {
  const [text, setText] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(e: Event) {
    e.preventDefault();
    const what = classifySignIn(text);
    if (what.kind === "bad") return setError(what.message);
    if (what.kind === "share") {
      setShareToken(what.link);
      const page = what.link.kind === "env" ? "envs" : "sessions";
      return navigate(`/${page}/${encodeURIComponent(what.link.sessionId)}`);
    }
    setBusy(true);
    setError(null);
    try {
      await client(what.token).me();
      setUserToken(what.token);
      navigate(next);
    } catch (err) {
      const e = err as { status?: number; message: string };
      setError(e.status === 401 ? "this token is not valid (revoked, or mistyped): ask for a new one with `hangar user add`" : e.message);
    } finally {
      setBusy(false);
    }
  }

  return (
    <main class="page narrow">
      <h1>Sign in</h1>
      <form onSubmit={submit} class="stack">
        <label for="token">API token or share link</label>
        <input
          id="token"
          name="token"
          autoComplete="off"
          spellcheck={false}
          placeholder="hgr_… or https://…/sessions/…#share=hgs_…"
          value={text}
          onInput={(e) => setText((e.target as HTMLInputElement).value)}
        />
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          Sign in
        </button>
        <p class="hint">
          <code>hangar up</code> prints the first admin's token; <code>hangar user add NAME</code> makes more.
        </p>
      </form>
    </main>
  );
}
