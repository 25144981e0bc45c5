// The web UI's entry point: picks the page for the location and keeps the signed-in
// user at hand.

import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "./style.css";
import { parseShareLink, setShareToken, setUserToken, tokenFor, userToken } from "./auth";
import { client, type Me } from "./api";
import { linkClick, navigate, onNavigate, route } from "./router";
import { SignIn } from "./pages/SignIn";
import { Sessions } from "./pages/Sessions";
import { NewSession } from "./pages/NewSession";
import { SessionPage } from "./pages/Session";
import { BuildPage, Images } from "./pages/Images";
import { Stats } from "./pages/Stats";
import type { ComponentType } from "preact";

type EnvModule = typeof import("./pages/Env");
/** The environment pages carry xterm.js: loaded only when one is opened. */
function Lazy<K extends keyof EnvModule>({ name, props }: { name: K; props: Record<string, unknown> }) {
  const [mod, setMod] = useState<EnvModule | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    import("./pages/Env").then(setMod, (e: Error) => setError(`the page could not be loaded: ${e.message}`));
  }, []);
  if (error) return <p class="error">{error}</p>;
  if (!mod) return null;
  const C = mod[name] as unknown as ComponentType<Record<string, unknown>>;
  return <C {...props} />;
}

/** A share link opened in the browser: keep its token for this tab, drop the fragment. */
function takeShareFragment() {
  const link = parseShareLink(location.pathname + location.hash);
  if (link) {
    setShareToken(link);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function App() {
  const [, setTick] = useState(0);
  const [me, setMe] = useState<Me | null>(null);
  const token = userToken();
  useEffect(() => onNavigate(() => setTick((t) => t + 1)), []);
  useEffect(() => {
    if (!token) return setMe(null);
    client(token)
      .me()
      .then(setMe)
      .catch((e: { status?: number }) => {
        if (e.status === 401) {
          setUserToken(null);
          navigate(`/sign-in?next=${encodeURIComponent(location.pathname)}`, true);
        }
      });
  }, [token]);

  let r = route(location.pathname, location.search);
  // Every page but sign-in and a session opened through a share link needs a user.
  const shared = (r.page === "session" || r.page === "env") && tokenFor(r.id) !== null;
  if (!token && r.page !== "sign-in" && !shared) {
    const next = location.pathname + location.search;
    history.replaceState(null, "", `/sign-in?next=${encodeURIComponent(next)}`);
    r = { page: "sign-in", next };
  }
  let page;
  switch (r.page) {
    case "sign-in":
      page = <SignIn next={r.next} />;
      break;
    case "sessions":
      page = <Sessions token={token!} me={me} />;
      break;
    case "new-session":
      page = <NewSession token={token!} />;
      break;
    case "session":
      page = <SessionPage key={r.id} id={r.id} me={me} />;
      break;
    case "envs":
      page = <Lazy name="Envs" props={{ token }} />;
      break;
    case "env":
      page = <Lazy key={r.id} name="EnvPage" props={{ id: r.id, token: tokenFor(r.id), me }} />;
      break;
    case "images":
      page = <Images token={token!} />;
      break;
    case "build":
      page = <BuildPage key={r.id} id={r.id} token={token!} />;
      break;
    case "stats":
      page = <Stats token={token!} />;
      break;
    case "not-found":
      page = (
        <main class="page">
          <p class="error">There is no page at {r.path}.</p>
        </main>
      );
  }
  return (
    <>
      <header class="top">
        <a href="/" class="brand" onClick={linkClick}>
          Hangar
        </a>
        {token && (
          <nav>
            <a href="/" onClick={linkClick}>
              Sessions
            </a>
            <a href="/envs" onClick={linkClick}>
              Environments
            </a>
            <a href="/images" onClick={linkClick}>
              Images
            </a>
            <a href="/stats" onClick={linkClick}>
              Stats
            </a>
            <a href="/sessions/new" onClick={linkClick} class="button small">
              New session
            </a>
          </nav>
        )}
        <span class="who">
          {me ? (
            <>
              <span data-testid="me">{me.login}</span>{" "}
              <button
                class="link"
                onClick={() => {
                  setUserToken(null);
                  navigate("/sign-in");
                }}
              >
                sign out
              </button>
            </>
          ) : (
            !token && (
              <a href="/sign-in" onClick={linkClick}>
                sign in
              </a>
            )
          )}
        </span>
      </header>
      {page}
    </>
  );
}

takeShareFragment();
const root = document.getElementById("app");
if (root) render(<App />, root);
