// Images and their builds: each repository's images (which one is current, so new
// sessions start from it), the builds (steps, outcome, trigger), one build with its log
// refreshing while it runs, and a button to build a registered repository now.

import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { client, type BuildView, type ImageView, type RepoView } from "../api";
import { linkClick, navigate } from "../router";
import { ago, bytes, duration } from "../format";

/** Calls `load` now and every `ms` until unmounted (or `ms` becomes null). */
function usePoll(load: () => Promise<unknown>, ms: number | null, deps: unknown[]) {
  useEffect(() => {
    let live = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const tick = async () => {
      await load().catch(() => undefined);
      if (live && ms !== null) timer = setTimeout(tick, ms);
    };
    void tick();
    return () => {
      live = false;
      clearTimeout(timer);
    };
  }, [...deps, ms]);
}

/** Groups images by repository: its registered name when the URL is registered. */
export function groupImages(images: ImageView[], repos: RepoView[]): [string, ImageView[]][] {
  const names = new Map(repos.map((r) => [r.url, r.name]));
  const groups = new Map<string, ImageView[]>();
  for (const i of images) {
    const key = i.repo ? (names.get(i.repo) ?? i.repo) : "base images";
    groups.set(key, [...(groups.get(key) ?? []), i]);
  }
  for (const list of groups.values()) {
    list.sort((a, b) => Number(b.current) - Number(a.current) || (b.created ?? "").localeCompare(a.created ?? ""));
  }
  return [...groups.entries()].sort(([a], [b]) => a.localeCompare(b));
}

function BuildBadge({ b }: { b: BuildView }) {
  const cls = b.status === "running" ? "running" : b.status === "failed" ? "interrupted" : "done";
  return <span class={`badge ${cls}`}>{b.status}</span>;
}

function took(b: BuildView): string {
  return duration((b.finished_at_ms ?? Date.now()) - b.started_at_ms);
}

export function Images({ token }: { token: string }) {
  const [images, setImages] = useState<ImageView[] | null>(null);
  const [builds, setBuilds] = useState<BuildView[]>([]);
  const [repos, setRepos] = useState<RepoView[]>([]);
  const [error, setError] = useState<string | null>(null);
  const running = builds.some((b) => b.status === "running");

  useEffect(() => {
    client(token)
      .repos()
      .then(setRepos)
      .catch(() => setRepos([]));
  }, [token]);
  usePoll(
    async () => {
      try {
        const c = client(token);
        const [i, b] = await Promise.all([c.images(), c.builds()]);
        setImages(i);
        setBuilds(b);
        setError(null);
      } catch (e) {
        setError((e as Error).message);
      }
    },
    running ? 2000 : 10000,
    [token],
  );
  const groups = useMemo(() => groupImages(images ?? [], repos), [images, repos]);

  return (
    <main class="page">
      <h1>Images and builds</h1>
      <p class="hint">
        Each registered repository has a current image; new sessions start from it. A build runs the repository's recipe and, when every
        setup step succeeds, makes its image current.
      </p>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      <StartBuild token={token} repos={repos} />
      <div class="two-col">
        <section class="card" data-testid="builds">
          <h2>Builds</h2>
          {builds.length === 0 && <p class="hint">No builds since the server started.</p>}
          <ul class="sessions">
            {builds.map((b) => (
              <li>
                <a href={`/images/builds/${encodeURIComponent(b.id)}`} onClick={linkClick}>
                  <span class="title">
                    {b.repo}
                    {b.reference ? ` @ ${b.reference}` : ""}
                  </span>
                  <span class="meta">
                    <BuildBadge b={b} /> {b.trigger === "schedule" ? "scheduled" : "asked for"} · {ago(b.started_at_ms)} · {took(b)} ·{" "}
                    {b.steps.length} steps
                  </span>
                </a>
              </li>
            ))}
          </ul>
        </section>
        <section class="card" data-testid="images">
          <h2>Images</h2>
          {images?.length === 0 && <p class="hint">No images yet.</p>}
          {groups.map(([repo, list]) => (
            <div class="image-group">
              <h3>{repo}</h3>
              <ul class="plain">
                {list.map((i) => (
                  <li>
                    <code>{i.id}</code> {i.current && <span class="badge running">current</span>}{" "}
                    <span class="meta">
                      {i.commit ? `commit ${i.commit.slice(0, 10)} · ` : ""}
                      {i.base} · {i.layers} layers · {bytes(i.size)}
                      {i.created ? ` · ${ago(Date.parse(i.created))}` : ""}
                    </span>
                  </li>
                ))}
              </ul>
            </div>
          ))}
        </section>
      </div>
    </main>
  );
}

/** Builds a registered repository now; a build already running for it is said inline. */
function StartBuild({ token, repos }: { token: string; repos: RepoView[] }) {
  const [repo, setRepo] = useState("");
  const [ref, setRef] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const chosen = repo || repos[0]?.name || "";
  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const b = await client(token).startBuild(chosen, ref.trim() || undefined);
      navigate(`/images/builds/${encodeURIComponent(b.id)}`);
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  }
  if (repos.length === 0) {
    return <p class="hint">Register a repository (hangar repo add) to build its image here.</p>;
  }
  return (
    <form class="filters" onSubmit={submit} data-testid="start-build">
      <label>
        Repository
        <select name="repo" value={chosen} onChange={(e) => setRepo((e.target as HTMLSelectElement).value)}>
          {repos.map((r) => (
            <option value={r.name}>{r.name}</option>
          ))}
        </select>
      </label>
      <label>
        Branch, tag or commit (optional)
        <input name="ref" value={ref} placeholder="its default branch" onInput={(e) => setRef((e.target as HTMLInputElement).value)} />
      </label>
      <div class="row end">
        <button type="submit" disabled={busy || !chosen}>
          {busy ? "Starting…" : "Build image"}
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

/** One build: steps, outcome and the log tail, refreshed every second while it runs. */
export function BuildPage({ token, id }: { token: string; id: string }) {
  const [b, setB] = useState<BuildView | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [gone, setGone] = useState(false);
  const log = useRef<HTMLPreElement>(null);
  const running = b === null || b.status === "running";
  usePoll(
    () =>
      client(token)
        .build(id)
        .then((v) => (setB(v), setError(null)))
        .catch((e: Error & { status?: number }) => {
          setError(e.message);
          // Build records live in the server's memory: a restart forgets them.
          if (e.status === 404) setGone(true);
        }),
    running && !gone ? 1000 : null,
    [token, id],
  );
  // Follow the log's end while it grows, unless the reader scrolled up.
  useEffect(() => {
    const el = log.current;
    if (el && el.scrollHeight - el.scrollTop - el.clientHeight < 80) el.scrollTop = el.scrollHeight;
  }, [b?.log_tail]);

  return (
    <main class="page">
      <p class="meta">
        <a href="/images" onClick={linkClick}>
          ← Images and builds
        </a>
      </p>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {b && (
        <>
          <div class="session-head">
            <div>
              <h1>
                {b.repo}
                {b.reference ? ` @ ${b.reference}` : ""}
              </h1>
              <p class="meta">
                <span data-testid="build-status">
                  <BuildBadge b={b} />
                </span>{" "}
                {b.id} · {b.trigger === "schedule" ? "scheduled (the branch or recipe changed)" : "asked for"} · started{" "}
                {ago(b.started_at_ms)} · {took(b)}
                {b.commit && <> · commit <code>{b.commit.slice(0, 12)}</code></>}
                {b.image && (
                  <>
                    {" "}
                    · image <code>{b.image}</code> (now current)
                  </>
                )}
              </p>
            </div>
          </div>
          {b.error && (
            <p class="error" data-testid="build-error">
              {b.error}
            </p>
          )}
          <div class="build-body">
            <section class="card">
              <h2>Steps</h2>
              <ol class="steps" data-testid="build-steps">
                {b.steps.map((s) => (
                  <li>
                    <span class="step-name">{s.name}</span>{" "}
                    {s.ok === null ? (
                      b.status === "running" ? (
                        <span class="hint">running…</span>
                      ) : (
                        <span class="bad">did not finish</span>
                      )
                    ) : s.ok ? (
                      <span class="ok">ok</span>
                    ) : (
                      <span class="bad">failed</span>
                    )}{" "}
                    <span class="hint">
                      {s.cached ? "cached" : ""}
                      {s.elapsed_ms !== null ? ` ${duration(s.elapsed_ms)}` : ""}
                    </span>
                  </li>
                ))}
              </ol>
              {b.steps.length === 0 && <p class="hint">Resolving the commit…</p>}
            </section>
            <section class="card log">
              <h2>Log (last 64 KiB)</h2>
              <pre class="patch" ref={log} data-testid="build-log">
                {b.log_tail || (b.status === "running" ? "waiting for output…" : "(no output)")}
              </pre>
            </section>
          </div>
        </>
      )}
    </main>
  );
}
