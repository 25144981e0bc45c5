// One session, live: the agent's text and tool output as they stream, who is here and
// who is typing, the queue (edit or cancel your own prompts), stop, share links, and the
// prompt box (sends the typing signal; keeps the text when sending fails).

import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { ApiError, client, type DiffView, type Me, type SessionView, type ShareView } from "../api";
import { shareToken, shareUrl, tokenFor } from "../auth";
import { LiveSession, throttle } from "../live";
import type { Author, Prompt } from "../protocol";
import { typingOthers, type Turn } from "../session_state";
import { linkClick } from "../router";
import { toolSummary } from "../format";

const draftKey = (id: string) => `hangar.draft.${id}`;

function who(a?: Author) {
  return a ? a.login : "someone";
}

export function SessionPage({ id, me }: { id: string; me: Me | null }) {
  const token = tokenFor(id);
  const guest = shareToken(id) !== null;
  const api = useMemo(() => (token ? client(token) : null), [token]);
  const [info, setInfo] = useState<SessionView | null>(null);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [live, setLive] = useState<LiveSession | null>(null);
  const [, setTick] = useState(0);
  /** Prompts this tab sent (a guest's only way to know which are theirs). */
  const [mine, setMine] = useState<Set<number>>(new Set());

  useEffect(() => {
    if (!api || !token) return;
    api
      .session(id)
      .then(setInfo)
      .catch((e: Error) => setLoadError(e.message));
    const diagnose = () =>
      api.session(id).then(
        () => null,
        (e: ApiError) => (e.status === 0 ? null : e.message),
      );
    const l = new LiveSession(id, token, diagnose);
    const off = l.subscribe(() => setTick((t) => t + 1));
    setLive(l);
    const vis = () => l.send({ type: "presence", state: document.visibilityState === "visible" ? "viewing" : "away" });
    document.addEventListener("visibilitychange", vis);
    return () => {
      off();
      l.close();
      document.removeEventListener("visibilitychange", vis);
    };
  }, [id, token]);

  if (!token || !api) return null;

  const isMine = (a: Author, promptId?: number) =>
    (promptId !== undefined && mine.has(promptId)) || (!guest && me !== null && a.user_id === me.id);
  const s = live?.state;
  const running = s?.turns.some((t) => t.state === "running") ?? false;
  const typers = s ? typingOthers(s, (a) => !guest && me !== null && a.user_id === me.id) : [];

  return (
    <main class="page session">
      <div class="session-head">
        <div>
          <h1 data-testid="session-title">{info?.title || "Session"}</h1>
          <p class="meta">
            {info?.repo}{" "}
            <span class={`badge ${s?.status ?? info?.status ?? ""}`} data-testid="status">
              {s?.status ?? info?.status ?? "…"}
            </span>{" "}
            <span class={`link-state ${live?.link ?? ""}`} data-testid="link">
              {live?.link === "live" ? "live" : live?.link}
            </span>
          </p>
        </div>
        <div class="actions">
          {running && (
            <button
              class="danger"
              data-testid="stop"
              onClick={() => api.stop(id).catch((e: Error) => alert(e.message))}
            >
              Stop
            </button>
          )}
          {!guest && <ShareButton id={id} api={api} />}
        </div>
      </div>
      {loadError && (
        <p class="error" role="alert">
          {loadError}
        </p>
      )}
      {live?.linkError && (
        <p class="error" role="alert" data-testid="link-error">
          {live.linkError}
        </p>
      )}
      <div class="session-body">
        <section class="transcript" data-testid="transcript" aria-live="polite">
          {s && s.turns.length === 0 && <p class="hint">Nothing yet: send a prompt below.</p>}
          {s?.turns.map((t) => <TurnView turn={t} />)}
        </section>
        <aside class="side">
          <section>
            <h2>Here now</h2>
            <ul class="people" data-testid="participants">
              {s?.participants.map((p) => (
                <li>
                  <span class="dot" /> {p.participant.login}
                  {p.connections > 1 && <span class="hint"> ×{p.connections}</span>}
                  {p.typing && <span class="typing"> typing…</span>}
                  {p.state === "away" && <span class="hint"> away</span>}
                </li>
              ))}
            </ul>
          </section>
          <QueueView queue={s?.queue ?? []} isMine={isMine} api={api} id={id} />
          <DiffPanel id={id} api={api} finished={s?.turns.filter((t) => t.state !== "running").length ?? 0} />
          {s && s.files.size > 0 && (
            <section>
              <h2>Files changed</h2>
              <ul class="files">
                {[...s.files].map(([path, change]) => (
                  <li>
                    <span class={`change ${change}`}>{change[0].toUpperCase()}</span> {path}
                  </li>
                ))}
              </ul>
            </section>
          )}
          {s && (s.prs.length > 0 || s.pushes.length > 0 || s.commits.length > 0 || s.reviews.length > 0 || s.pushFailed || s.sandboxNotice) && (
            <section>
              <h2>Branch and pull request</h2>
              {s.commits.map((c) => (
                <p class="hint">
                  {c.commit.slice(0, 10)} by {c.author}
                  {c.coAuthors.length > 0 && ` with ${c.coAuthors.join(", ")}`}
                </p>
              ))}
              {s.pushFailed && <p class="error">{s.pushFailed}</p>}
              {s.sandboxNotice && <p class="hint">{s.sandboxNotice}</p>}
              {s.prs.map((p) => (
                <p>
                  <a href={p.url} target="_blank" rel="noreferrer">
                    #{p.number} {p.title}
                  </a>{" "}
                  <span class="badge">{p.state}</span>
                </p>
              ))}
              {s.reviews.map((r) => (
                <p class="hint">
                  <a href={r.url} target="_blank" rel="noreferrer">
                    #{r.number}
                  </a>{" "}
                  {r.who} {r.what}
                  {r.body && `: ${r.body}`}
                </p>
              ))}
              {s.pushes.map((p) => (
                <p class="hint">
                  pushed {p.branch} @ {p.commit.slice(0, 10)}
                </p>
              ))}
            </section>
          )}
          {s && s.spawned.length > 0 && (
            <section>
              <h2>Sub-sessions</h2>
              <ul>
                {s.spawned.map((c) => (
                  <li>
                    <a href={`/sessions/${encodeURIComponent(c.sessionId)}`} onClick={linkClick}>
                      {c.sessionId}
                    </a>{" "}
                    <span class="hint">{c.repo}</span>
                  </li>
                ))}
              </ul>
            </section>
          )}
        </aside>
      </div>
      <Composer
        id={id}
        api={api}
        live={live}
        typers={typers}
        onSent={(p) => setMine((m) => new Set(m).add(p.id))}
        socketError={s?.error}
      />
    </main>
  );
}

function TurnView({ turn }: { turn: Turn }) {
  return (
    <article class={`turn ${turn.state}`} data-testid="turn" data-prompt={turn.promptId}>
      <header>
        <span class="author" data-testid="turn-author">
          {who(turn.author)}
        </span>
        <span class="prompt-text">{turn.text}</span>
      </header>
      {turn.items.map((item) =>
        item.kind === "text" ? (
          <div class="model-text" data-testid="model-text">
            {item.text}
          </div>
        ) : (
          <details class={`tool ${item.call.ok === false ? "failed" : ""}`} open data-testid="tool">
            <summary>
              <code>{toolSummary(item.call.tool, item.call.input)}</code>{" "}
              {item.call.ok === undefined ? (
                <span class="hint">running…</span>
              ) : item.call.ok ? (
                <span class="ok">ok</span>
              ) : (
                <span class="bad">failed{item.call.exitCode !== undefined ? ` (exit ${item.call.exitCode})` : ""}</span>
              )}
            </summary>
            {item.call.output && <pre data-testid="tool-output">{item.call.output}</pre>}
          </details>
        ),
      )}
      {turn.state !== "running" && (
        <footer class={`outcome ${turn.state}`} data-testid="outcome">
          {turn.state}
          {turn.error ? `: ${turn.error}` : ""}
        </footer>
      )}
    </article>
  );
}

function QueueView({
  queue,
  isMine,
  api,
  id,
}: {
  queue: Prompt[];
  isMine: (a: Author, promptId?: number) => boolean;
  api: ReturnType<typeof client>;
  id: string;
}) {
  const [editing, setEditing] = useState<{ id: number; text: string } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const act = (p: Promise<unknown>, after?: () => void) =>
    p.then(
      () => {
        setError(null);
        after?.();
      },
      (e: Error) => setError(e.message),
    );
  return (
    <section>
      <h2>Queue</h2>
      {queue.length === 0 && <p class="hint">Empty.</p>}
      <ol class="queue" data-testid="queue">
        {queue.map((p) => (
          <li data-testid="queued" data-prompt={p.id}>
            <span class="author" data-testid="queued-author">
              {p.author.login}
            </span>
            {editing?.id === p.id ? (
              <div class="stack">
                <textarea
                  rows={3}
                  value={editing.text}
                  onInput={(e) => setEditing({ id: p.id, text: (e.target as HTMLTextAreaElement).value })}
                />
                <div class="row">
                  <button class="small" onClick={() => act(api.editPrompt(id, p.id, editing.text), () => setEditing(null))}>
                    Save
                  </button>
                  <button class="small secondary" onClick={() => setEditing(null)}>
                    Keep as is
                  </button>
                </div>
              </div>
            ) : (
              <span class="text" data-testid="queued-text">
                {p.text}
              </span>
            )}
            {isMine(p.author, p.id) && editing?.id !== p.id && (
              <span class="row">
                <button class="small secondary" onClick={() => setEditing({ id: p.id, text: p.text })}>
                  Edit
                </button>
                <button class="small secondary" data-testid="cancel-prompt" onClick={() => act(api.cancelPrompt(id, p.id))}>
                  Cancel
                </button>
              </span>
            )}
          </li>
        ))}
      </ol>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
    </section>
  );
}

function Composer({
  id,
  api,
  live,
  typers,
  onSent,
  socketError,
}: {
  id: string;
  api: ReturnType<typeof client>;
  live: LiveSession | null;
  typers: string[];
  onSent: (p: Prompt) => void;
  socketError?: string;
}) {
  const [text, setText] = useState(() => sessionStorage.getItem(draftKey(id)) ?? "");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const typing = useMemo(() => throttle(2000, () => live?.send({ type: "typing" })), [live]);
  const box = useRef<HTMLTextAreaElement>(null);

  async function send(e?: Event) {
    e?.preventDefault();
    if (!text.trim()) return setError("write a prompt first");
    setBusy(true);
    try {
      const p = await api.prompt(id, text);
      onSent(p);
      setText("");
      sessionStorage.removeItem(draftKey(id));
      setError(null);
    } catch (err) {
      // The text stays in the box, and in this tab's storage, to try again.
      setError((err as Error).message);
    } finally {
      setBusy(false);
      box.current?.focus();
    }
  }

  return (
    <form class="composer" onSubmit={send}>
      {typers.length > 0 && (
        <p class="hint typing" data-testid="typing">
          {typers.join(", ")} {typers.length === 1 ? "is" : "are"} typing…
        </p>
      )}
      {(error || socketError) && (
        <p class="error" role="alert" data-testid="prompt-error">
          {error ?? socketError}
        </p>
      )}
      <div class="row">
        <textarea
          ref={box}
          name="prompt"
          data-testid="prompt"
          rows={2}
          placeholder="Ask the agent… (Ctrl+Enter sends; while it works, prompts queue)"
          value={text}
          onInput={(e) => {
            const v = (e.target as HTMLTextAreaElement).value;
            setText(v);
            sessionStorage.setItem(draftKey(id), v);
            typing();
          }}
          onKeyDown={(e) => {
            if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) void send(e);
          }}
        />
        <button type="submit" data-testid="send" disabled={busy}>
          Send
        </button>
      </div>
    </form>
  );
}

function ShareButton({ id, api }: { id: string; api: ReturnType<typeof client> }) {
  const [open, setOpen] = useState(false);
  const [link, setLink] = useState<ShareView | null>(null);
  const [error, setError] = useState<string | null>(null);
  async function create(scope: "view" | "prompt") {
    try {
      setLink(await api.share(id, scope));
      setError(null);
    } catch (e) {
      setError((e as Error).message);
    }
  }
  return (
    <div class="share">
      <button class="secondary" data-testid="share" onClick={() => setOpen(!open)}>
        Share
      </button>
      {open && (
        <div class="popover stack">
          <div class="row">
            <button class="small" data-testid="share-view" onClick={() => create("view")}>
              Link to watch
            </button>
            <button class="small" data-testid="share-prompt" onClick={() => create("prompt")}>
              Link to watch and prompt
            </button>
          </div>
          {link?.token && (
            <>
              <input readOnly data-testid="share-url" value={shareUrl(location.origin, id, link.token)} onFocus={(e) => (e.target as HTMLInputElement).select()} />
              <p class="hint">Shown once. Anyone with it can {link.scope === "prompt" ? "watch and prompt" : "watch"} this session.</p>
            </>
          )}
          {error && (
            <p class="error" role="alert">
              {error}
            </p>
          )}
        </div>
      )}
    </div>
  );
}

/** The session's changes against its base branch, reloaded when a prompt finishes. */
function DiffPanel({ id, api, finished }: { id: string; api: ReturnType<typeof client>; finished: number }) {
  const [diff, setDiff] = useState<DiffView | null>(null);
  const [note, setNote] = useState<string | null>(null);
  const [open, setOpen] = useState(false);
  useEffect(() => {
    if (!open) return;
    api.diff(id).then(
      (d) => {
        setDiff(d);
        setNote(null);
      },
      (e: ApiError) => {
        setDiff(null);
        setNote(e.message);
      },
    );
  }, [open, finished, id]);
  return (
    <section>
      <h2>Changes</h2>
      {!open ? (
        <button class="small secondary" data-testid="show-diff" onClick={() => setOpen(true)}>
          Show the diff
        </button>
      ) : (
        <>
          {note && <p class="hint" data-testid="diff-note">{note}</p>}
          {diff && (
            <>
              <p class="hint">
                {diff.branch} against {diff.base}
                {diff.files.length === 0 && ": no changes yet"}
              </p>
              <ul class="files">
                {diff.files.map((f) => (
                  <li>
                    <span class="ok">+{f.additions ?? "?"}</span> <span class="bad">-{f.deletions ?? "?"}</span> {f.path}
                  </li>
                ))}
              </ul>
              {diff.patch && (
                <pre class="patch">
                  {diff.patch.split("\n").map((line) => (
                    <span class={line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : ""}>{line + "\n"}</span>
                  ))}
                </pre>
              )}
              {diff.truncated && <p class="hint">The patch was cut at 1 MiB.</p>}
            </>
          )}
        </>
      )}
    </section>
  );
}
