// Environments: the list, and one environment with a terminal (xterm.js over a
// WebSocket bridged to a PTY in the sandbox; every connection gets its own shell, and a
// dropped connection reconnects with backoff to a new one), who else is connected, and
// beside the terminal the environment's files and its repository.

import { useEffect, useRef, useState } from "preact/hooks";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import "@xterm/xterm/css/xterm.css";
import { client, type EnvView, type FilesView, type Me, type RepoStatusView } from "../api";
import { linkClick, navigate } from "../router";
import { ago, bytes } from "../format";
import { backoffMs } from "../live";
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
  const [exited, setExited] = useState(false);
  const host = useRef<HTMLDivElement>(null);
  const newShell = useRef<() => void>(() => undefined);

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
    const enc = new TextEncoder();
    const note = (color: number, text: string) => term.write(`\r\n\x1b[${color}m[${text}]\x1b[0m\r\n`);
    let ws: WebSocket | null = null;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let attempts = 0;
    let connectedOnce = false;
    let stopped = false;

    // Each connection gets its own shell: when one drops (server restart, network),
    // reconnect with backoff to a new shell in the same sandbox, and say so.
    const connect = () => {
      clearTimeout(timer);
      setExited(false);
      setState(attempts ? `reconnecting (attempt ${attempts + 1})…` : "connecting");
      const sock = new WebSocket(terminalUrl(location.href, id, token, term.cols, term.rows));
      ws = sock;
      sock.binaryType = "arraybuffer";
      let shellExited = false;
      sock.onopen = () => {
        if (connectedOnce) note(33, "reconnected: this is a new shell; the previous one ended with the connection");
        connectedOnce = true;
        attempts = 0;
        setState("connected");
        setError(null);
        term.focus();
      };
      sock.onmessage = (m) => {
        if (m.data instanceof ArrayBuffer) {
          term.write(new Uint8Array(m.data));
          return;
        }
        const msg = JSON.parse(m.data as string) as TerminalServerMessage;
        if (msg.type === "presence") setPeople(msg.participants);
        if (msg.type === "exit") {
          shellExited = true;
          setExited(true);
          setState(`the shell exited (${msg.code ?? "signal"})`);
        }
        if (msg.type === "error") setError(msg.error.message);
      };
      sock.onclose = (ev) => {
        if (stopped || ws !== sock) return;
        ws = null;
        setPeople([]);
        if (shellExited) return;
        const why = ev.reason || (ev.code === 1006 ? "the connection dropped" : `closed with ${ev.code}`);
        // The server refused what this page sent: trying again would only repeat it.
        if (ev.code === 1007 || ev.code === 1008) {
          setState(`disconnected: ${why}`);
          setExited(true);
          return;
        }
        const wait = backoffMs(attempts++);
        if (attempts === 1 && connectedOnce) note(31, `disconnected: ${why}; reconnecting…`);
        setState(`disconnected: ${why}; reconnecting in ${Math.max(1, Math.round(wait / 1000))} s`);
        // An environment that is gone or stopped (or a link that no longer opens it) ends
        // the retries.
        client(token)
          .env(id)
          .then(
            (now) => {
              if (stopped) return;
              if (now.status === "running") {
                timer = setTimeout(connect, wait);
                return;
              }
              setError("the environment's sandbox is not running");
              setState("disconnected");
              setExited(true);
            },
            (e: Error & { status?: number }) => {
              if (stopped) return;
              if (e.status && e.status >= 400 && e.status < 500) {
                setError(e.message);
                setState("disconnected");
                setExited(true);
              } else {
                timer = setTimeout(connect, wait);
              }
            },
          );
      };
    };
    newShell.current = () => {
      attempts = 0;
      connect();
    };
    connect();

    const input = term.onData((d) => ws?.readyState === WebSocket.OPEN && ws.send(enc.encode(d)));
    const resize = term.onResize(({ cols, rows }) => {
      if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", cols, rows }));
    });
    const onWindow = () => fit.fit();
    window.addEventListener("resize", onWindow);
    return () => {
      stopped = true;
      clearTimeout(timer);
      window.removeEventListener("resize", onWindow);
      input.dispose();
      resize.dispose();
      ws?.close(1000);
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
            <span data-testid="terminal-state">{state}</span>{" "}
            {exited && (
              <button class="small secondary" onClick={() => newShell.current()}>
                New shell
              </button>
            )}
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
      <div class="env-body">
        <div class="terminal" ref={host} data-testid="terminal" />
        {env && <EnvSide id={env.id} token={token} />}
      </div>
    </main>
  );
}

/** The environment's files and repository, beside its terminal. */
function EnvSide({ id, token }: { id: string; token: string }) {
  const [tab, setTab] = useState<"files" | "repo">("files");
  return (
    <aside class="env-side card">
      <div class="tabs" role="tablist">
        <button role="tab" aria-selected={tab === "files"} class={tab === "files" ? "small" : "small secondary"} onClick={() => setTab("files")}>
          Files
        </button>
        <button role="tab" aria-selected={tab === "repo"} class={tab === "repo" ? "small" : "small secondary"} onClick={() => setTab("repo")}>
          Repository
        </button>
      </div>
      {tab === "files" ? <EnvFiles id={id} token={token} /> : <EnvRepo id={id} token={token} />}
    </aside>
  );
}

/** The parent of an absolute path. */
function parentPath(path: string): string {
  const parts = path.split("/").filter(Boolean);
  parts.pop();
  return "/" + parts.join("/");
}

/** A file browser over the environment's sandbox: directories list, files show their text. */
function EnvFiles({ id, token }: { id: string; token: string }) {
  const [path, setPath] = useState<string | undefined>(undefined);
  const [view, setView] = useState<FilesView | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    setError(null);
    client(token)
      .envFiles(id, path)
      .then((v) => live && setView(v))
      .catch((e: Error) => live && setError(e.message));
    return () => {
      live = false;
    };
  }, [id, token, path, tick]);
  const shown = view?.path ?? path ?? "";
  const crumbs = shown.split("/").filter(Boolean);
  return (
    <div data-testid="env-files">
      <div class="row between">
        <nav class="crumbs" data-testid="files-path">
          <button class="link" onClick={() => setPath("/")}>
            /
          </button>
          {crumbs.map((c, i) => (
            <>
              <button class="link" onClick={() => setPath("/" + crumbs.slice(0, i + 1).join("/"))}>
                {c}
              </button>
              {i < crumbs.length - 1 && "/"}
            </>
          ))}
        </nav>
        <button class="small secondary" onClick={() => setTick((t) => t + 1)} title="Read again">
          ↻
        </button>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {view?.kind === "directory" && (
        <ul class="files listing">
          {view.path !== "/" && (
            <li>
              <button class="link" onClick={() => setPath(parentPath(view.path))}>
                ..
              </button>
            </li>
          )}
          {view.entries.map((e) => (
            <li>
              <button class="link" onClick={() => setPath(`${view.path === "/" ? "" : view.path}/${e.name}`)}>
                {e.name}
                {e.kind === "dir" ? "/" : e.kind === "symlink" ? " →" : ""}
              </button>
              {e.kind === "file" && <span class="hint"> {bytes(e.size)}</span>}
              {e.link_target && <span class="hint"> {e.link_target}</span>}
            </li>
          ))}
          {view.entries.length === 0 && <li class="hint">(empty)</li>}
        </ul>
      )}
      {view?.kind === "file" && (
        <>
          <p class="meta">
            <button class="link" onClick={() => setPath(parentPath(view.path))}>
              ← {parentPath(view.path)}
            </button>{" "}
            · {bytes(view.size)}
          </p>
          <pre class="patch file-text" data-testid="file-text">
            {view.binary ? "(binary file: not shown)" : view.text}
          </pre>
        </>
      )}
    </div>
  );
}

/** The environment's checkout: branch, `git status --short`, the last commits. */
function EnvRepo({ id, token }: { id: string; token: string }) {
  const [repo, setRepo] = useState<RepoStatusView | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    client(token)
      .envRepo(id)
      .then((r) => live && (setRepo(r), setError(null)))
      .catch((e: Error) => live && (setRepo(null), setError(e.message)));
    return () => {
      live = false;
    };
  }, [id, token, tick]);
  return (
    <div data-testid="env-repo">
      <div class="row between">
        <span class="meta">{repo?.path}</span>
        <button class="small secondary" onClick={() => setTick((t) => t + 1)} title="Read again">
          ↻
        </button>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {repo && (
        <>
          <p>
            On <strong data-testid="repo-branch">{repo.branch ?? "(detached HEAD)"}</strong>
            {repo.upstream && <span class="hint"> tracking {repo.upstream}</span>}
          </p>
          <h2>Changes</h2>
          {repo.status.length === 0 ? (
            <p class="hint">Nothing to commit: the working tree is clean.</p>
          ) : (
            <pre class="patch" data-testid="repo-status">
              {repo.status.join("\n")}
            </pre>
          )}
          <h2>Last commits</h2>
          {repo.commits.length === 0 && <p class="hint">No commits yet.</p>}
          <ul class="files commits" data-testid="repo-commits">
            {repo.commits.map((c) => (
              <li title={c.hash}>
                <code>{c.hash.slice(0, 8)}</code> {c.subject} <span class="hint">— {c.author}, {ago(c.at_ms)}</span>
              </li>
            ))}
          </ul>
        </>
      )}
    </div>
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
