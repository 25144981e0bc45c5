// The HTTP API client: one function per call the UI makes, every failure an `ApiError`
// carrying the server's `{"error": {"code", "message"}}`.

import type { Author, Prompt } from "./protocol";

/** A failed call: the HTTP status (0 when the server could not be reached) and the
 * server's error code and message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** `GET /api/me`. */
export interface Me {
  id: number;
  login: string;
  name: string;
  email: string | null;
  is_admin: boolean;
  github_login: string | null;
  token_name: string;
}

/** A session as `GET /api/sessions[/{id}]` shows it. */
export interface SessionView {
  id: string;
  repo: string;
  title: string;
  status: string;
  created_by: number;
  created_by_login?: string;
  created_at_ms: number;
  updated_at_ms: number;
  last_seq?: number;
  running?: Prompt;
  queue?: Prompt[];
}

/** A share link; `token` only when just created. */
export interface ShareView {
  id: number;
  session_id: string;
  scope: string;
  token?: string;
}

/** `GET /api/sessions/{id}/diff`: the session's branch against its base. */
export interface DiffView {
  branch: string;
  base: string;
  head?: string | null;
  files: { path: string; additions?: number | null; deletions?: number | null }[];
  patch: string;
  truncated: boolean;
}

/** A registered repository (`GET /api/repos`). */
export interface RepoView {
  name: string;
  url: string;
  default_branch: string;
  description: string;
}

/** An environment (`/api/environments`). */
export interface EnvView {
  id: string;
  name: string;
  python: string;
  suite: string;
  repo?: string | null;
  image: string;
  sandbox: string;
  status: string;
  created_by: number;
  created_at_ms: number;
  path: string;
}

/** An image in the layer store (`GET /api/images`). */
export interface ImageView {
  id: string;
  digest: string;
  /** The repository URL it was built from. */
  repo: string | null;
  commit: string | null;
  base: string;
  created: string | null;
  size: number;
  layers: number;
  /** Its repository's current image: new sessions start from it. */
  current: boolean;
}

/** One step of a build. */
export interface BuildStep {
  name: string;
  cached: boolean;
  elapsed_ms: number | null;
  ok: boolean | null;
}

/** A build (`/api/images/builds`). */
export interface BuildView {
  id: string;
  repo: string;
  reference: string | null;
  status: "running" | "succeeded" | "failed";
  trigger: string;
  commit: string | null;
  steps: BuildStep[];
  log_tail: string;
  error: string | null;
  image: string | null;
  started_at_ms: number;
  finished_at_ms: number | null;
}

/** Pull request figures (`GET /api/stats`). */
export interface StatsFigures {
  prs_opened: number;
  prs_merged: number;
  prs_closed_unmerged: number;
  median_time_to_merge_secs: number | null;
  approval_rate: number | null;
  revisions: number;
  agent_code_share: number | null;
}

/** One UTC day's activity. */
export interface UsageDay {
  day_ms: number;
  sessions: number;
  prs_opened: number;
  prs_merged: number;
}

/** `GET /api/stats`. */
export interface StatsView {
  overall: StatsFigures;
  repos: Record<string, StatsFigures>;
  usage: { sessions: number; sessions_with_pr: number; sessions_merged: number; days: UsageDay[] };
  prompting_now: string[];
}

/** `GET /api/pool`. */
export interface PoolView {
  idle: { repo: string; idle: number }[];
  hits: number;
  misses: number;
  mean_claim_ms: number;
  reservations: number;
  drafts: { user: string; repo: string; sandbox: string | null }[];
}

/** A directory entry in an environment. */
export interface FileEntry {
  name: string;
  kind: "file" | "dir" | "symlink" | "other";
  size: number;
  mtime_ms: number;
  link_target?: string;
}

/** `GET /api/environments/{id}/files`: a directory's entries or a file's text. */
export type FilesView =
  | { kind: "directory"; path: string; entries: FileEntry[] }
  | { kind: "file"; path: string; size: number; text: string | null; binary: boolean };

/** `GET /api/environments/{id}/repo`: the environment's checkout. */
export interface RepoStatusView {
  path: string;
  branch: string | null;
  upstream: string | null;
  status: string[];
  commits: { hash: string; author: string; at_ms: number; subject: string }[];
}

/** Turns a failed response into an `ApiError`, whatever its body. */
async function failure(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => "");
  try {
    const body = JSON.parse(text) as { error?: { code?: string; message?: string } };
    if (body.error?.message) {
      return new ApiError(res.status, body.error.code ?? "error", body.error.message);
    }
  } catch {
    // not JSON: fall through
  }
  return new ApiError(res.status, "http_" + res.status, `${res.status} ${res.statusText || "error"}`);
}

/** One call with `token` as the bearer. */
export async function call<T>(token: string, method: string, path: string, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers: {
        Authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "unreachable", `the server cannot be reached (${String(e)}); is hangar running?`);
  }
  if (!res.ok) throw await failure(res);
  const text = await res.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

const enc = encodeURIComponent;

/** The calls the UI makes, bound to one token. */
export function client(token: string) {
  return {
    me: () => call<Me>(token, "GET", "/api/me"),
    sessions: () => call<SessionView[]>(token, "GET", "/api/sessions"),
    session: (id: string) => call<SessionView>(token, "GET", `/api/sessions/${enc(id)}`),
    createSession: (repo: string, prompt?: string, title?: string) =>
      call<SessionView>(token, "POST", "/api/sessions", {
        repo,
        ...(prompt ? { prompt } : {}),
        ...(title ? { title } : {}),
      }),
    prompt: (id: string, text: string) => call<Prompt>(token, "POST", `/api/sessions/${enc(id)}/prompts`, { text }),
    editPrompt: (id: string, promptId: number, text: string) =>
      call<Prompt>(token, "PATCH", `/api/sessions/${enc(id)}/queue/${promptId}`, { text }),
    cancelPrompt: (id: string, promptId: number) =>
      call<Prompt>(token, "DELETE", `/api/sessions/${enc(id)}/queue/${promptId}`),
    diff: (id: string) => call<DiffView>(token, "GET", `/api/sessions/${enc(id)}/diff`),
    stop: (id: string) => call<{ stopped: number | null }>(token, "POST", `/api/sessions/${enc(id)}/stop`),
    share: (id: string, scope: "view" | "prompt") =>
      call<ShareView>(token, "POST", `/api/sessions/${enc(id)}/shares`, { scope }),
    repos: () => call<RepoView[]>(token, "GET", "/api/repos"),
    typing: (repo: string) => call<void>(token, "POST", "/api/typing", { repo }),
    envs: () => call<EnvView[]>(token, "GET", "/api/environments"),
    createEnv: (name: string, python: string, repo?: string) =>
      call<EnvView & { share_path?: string }>(token, "POST", "/api/environments", {
        name,
        python,
        ...(repo ? { repo } : {}),
      }),
    env: (id: string) => call<EnvView>(token, "GET", `/api/environments/${enc(id)}`),
    envFiles: (id: string, path?: string) =>
      call<FilesView>(token, "GET", `/api/environments/${enc(id)}/files${path ? `?path=${enc(path)}` : ""}`),
    envRepo: (id: string) => call<RepoStatusView>(token, "GET", `/api/environments/${enc(id)}/repo`),
    images: () => call<ImageView[]>(token, "GET", "/api/images"),
    builds: () => call<BuildView[]>(token, "GET", "/api/images/builds"),
    build: (id: string) => call<BuildView>(token, "GET", `/api/images/builds/${enc(id)}`),
    startBuild: (repo: string, ref?: string) =>
      call<BuildView>(token, "POST", "/api/images/builds", { repo, ...(ref ? { ref } : {}) }),
    stats: () => call<StatsView>(token, "GET", "/api/stats"),
    pool: () => call<PoolView>(token, "GET", "/api/pool"),
  };
}

/** The client type. */
export type Client = ReturnType<typeof client>;

/** Whether `a` is the same participant as `b`. */
export function sameAuthor(a: Author, b: Author): boolean {
  return a.user_id === b.user_id && a.login === b.login && (a.share_id ?? null) === (b.share_id ?? null);
}
