// Environments: the list, and one environment with a terminal (xterm.js over a
// WebSocket bridged to a PTY in the sandbox; every connection gets its own shell) and
// who else is connected.

import { useEffect, useRef, useState } from "preact/hooks";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import "@xterm/xterm/css/xterm.css";
import { client, type EnvView, type Me } from "../api";
import { linkClick, navigate } from "../router";
import { ago } from "../format";
import { terminalUrl, type TerminalServerMessage } from "../terminal";

export function Envs({ token }: { token: string }) {
  const [list, setList] = useState<EnvView[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    client(token)
      .envs()
      .then(setList)
      .catch((e: Error) => setError(e.message));
  }, [token]);
  return (
    <main class="page">
      <h1>Environments</h1>
      <p class="hint">
        Shared sandboxes without an agent: <code>hangar env create --name NAME --python 3.9 [--repo URL]</code>
      </p>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      <NewEnv token={token} />
      {list?.length === 0 && <p class="hint">No environments yet.</p>}
      <ul class="sessions">
        {list?.map((e) => (
          <li>
            <a href={`/envs/${encodeURIComponent(e.id)}`} onClick={linkClick}>
              <span class="title">{e.name}</span>
              <span class="meta">
                <span class={`badge ${e.status}`}>{e.status}</span> Python {e.python} · {e.repo ?? "no repository"} ·{" "}
                {ago(e.created_at_ms)}
              </span>
            </a>
          </li>
        ))}
      </ul>
    </main>
  );
}

export function EnvPage({ id, token }: { id: string; token: string; me: Me | null }) {
  const [env, setEnv] = useState<EnvView | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [people, setPeople] = useState<{ login: string; terminals: number }[]>([]);
  const [state, setState] = useState("connecting");
  const host = useRef<HTMLDivElement>(null);

  useEffect(() => {
    client(token)
      .env(id)
      .then(setEnv)
      .catch((e: Error) => setError(e.message));
  }, [id, token]);

  useEffect(() => {
    if (!host.current) return;
    const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 13 });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(host.current);
    fit.fit();
    const ws = new WebSocket(terminalUrl(location.href, id, token, term.cols, term.rows));
    ws.binaryType = "arraybuffer";
    const enc = new TextEncoder();
    ws.onopen = () => {
      setState("connected");
      term.focus();
    };
    ws.onmessage = (m) => {
      if (m.data instanceof ArrayBuffer) {
        term.write(new Uint8Array(m.data));
        return;
      }
      const msg = JSON.parse(m.data as string) as TerminalServerMessage;
      if (msg.type === "presence") setPeople(msg.participants);
      if (msg.type === "exit") {
        setState(`the shell exited (${msg.code ?? "signal"})`);
      }
      if (msg.type === "error") setError(msg.error.message);
    };
    ws.onclose = (ev) => {
      setState((s) => (s.startsWith("the shell") ? s : `disconnected${ev.reason ? ": " + ev.reason : ""}`));
      if (ev.code === 1006) {
        client(token)
          .env(id)
          .catch((e: Error) => setError(e.message));
      }
    };
    const input = term.onData((d) => ws.readyState === WebSocket.OPEN && ws.send(enc.encode(d)));
    const resize = term.onResize(({ cols, rows }) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", cols, rows }));
    });
    const onWindow = () => fit.fit();
    window.addEventListener("resize", onWindow);
    return () => {
      window.removeEventListener("resize", onWindow);
      input.dispose();
      resize.dispose();
      ws.close(1000);
      term.dispose();
    };
  }, [id, token]);

  return (
    <main class="page env">
      <div class="session-head">
        <div>
          <h1>{env?.name ?? "Environment"}</h1>
          <p class="meta">
            {env && (
              <>
                Python {env.python} (Debian {env.suite}) · {env.repo ?? "no repository"} ·{" "}
              </>
            )}
            <span data-testid="terminal-state">{state}</span>
          </p>
        </div>
        <ul class="people row" data-testid="env-participants">
          {people.map((p) => (
            <li>
              <span class="dot" /> {p.login}
              {p.terminals > 1 && <span class="hint"> ×{p.terminals}</span>}
            </li>
          ))}
        </ul>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      <div class="terminal" ref={host} data-testid="terminal" />
    </main>
  );
}

/** Creates an environment; the answer comes once its sandbox runs (the first of a Debian
 * suite builds its base, which takes a minute or two). */
function NewEnv({ token }: { token: string }) {
  const [name, setName] = useState("");
  const [python, setPython] = useState("3.11");
  const [repo, setRepo] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const env = await client(token).createEnv(name.trim(), python, repo.trim() || undefined);
      navigate(env.path);
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  }
  return (
    <form class="filters" onSubmit={submit} data-testid="new-env">
      <label>
        Name
        <input name="name" value={name} required onInput={(e) => setName((e.target as HTMLInputElement).value)} />
      </label>
      <label>
        Python
        <select name="python" value={python} onChange={(e) => setPython((e.target as HTMLSelectElement).value)}>
          <option value="3.11">3.11 (Debian bookworm)</option>
          <option value="3.9">3.9 (Debian bullseye)</option>
        </select>
      </label>
      <label>
        Repository (optional)
        <input name="repo" value={repo} placeholder="https://…/repo.git" onInput={(e) => setRepo((e.target as HTMLInputElement).value)} />
      </label>
      <div class="row">
        <button type="submit" disabled={busy || !name.trim()}>
          {busy ? "Creating… (the first of a Python version takes a minute or two)" : "Create environment"}
        </button>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
    </form>
  );
}
