// Browser-test support: a real `hangar serve` on a scratch data directory (tmpfs), users
// made with `hangar user add`, and Debian's chromium driven by playwright-core. Nothing
// here skips: a missing binary or browser fails the run with what to do.

import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../..");

/** Where screenshots go (gitignored). */
export const artifacts = resolve(here, "../e2e-artifacts");

/** The `hangar` binary: $HANGAR_BIN, else the debug build in $CARGO_TARGET_DIR or target/. */
export function hangarBin() {
  const candidates = [
    process.env.HANGAR_BIN,
    process.env.CARGO_TARGET_DIR && join(process.env.CARGO_TARGET_DIR, "x86_64-unknown-linux-gnu/debug/hangar"),
    join(repo, "target/x86_64-unknown-linux-gnu/debug/hangar"),
  ].filter(Boolean);
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new Error(`no hangar binary (looked at ${candidates.join(", ")}): run \`cargo build --workspace --bins\` first, or set HANGAR_BIN`);
  }
  return found;
}

/** Debian's chromium: $CHROMIUM, else /usr/bin/chromium. */
export function chromiumPath() {
  const p = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!existsSync(p)) {
    throw new Error(`chromium is not installed at ${p}: install Debian's \`chromium\` package (scripts/install-deps.sh does), or set CHROMIUM`);
  }
  return p;
}

/** Starts chromium (headless). */
export async function browser() {
  return chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    // Tests run as root, where chromium's own sandbox cannot start.
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
}

/** A scratch directory on tmpfs. */
export function scratch(name) {
  const base = existsSync("/dev/shm") ? "/dev/shm" : undefined;
  return mkdtempSync(join(base ?? (process.env.TMPDIR || "/tmp"), `hangar-e2e-${name}-`));
}

function hangarEnv(dataDir) {
  const env = { ...process.env, HANGAR_DATA_DIR: dataDir };
  delete env.HANGAR_CONFIG;
  delete env.HANGAR_LISTEN;
  return env;
}

/** A running `hangar serve` with the scripted stand-in agent. */
export async function startServer(name, extraToml = "") {
  const bin = hangarBin();
  const dataDir = scratch(name);
  mkdirSync(dataDir, { recursive: true });
  writeFileSync(join(dataDir, "hangar.toml"), `[sessions]\nexecutor = "scripted"\n${extraToml}\n`);
  // Debian base rootfs tarballs (mmdebstrap, a minute or two each) are shared between
  // runs through the test cache, like the Rust suites' bullseye rootfs.
  const cache = join(process.env.HANGAR_TEST_CACHE ?? "/var/cache/hangar-test", "bases");
  mkdirSync(cache, { recursive: true });
  mkdirSync(join(dataDir, "images"), { recursive: true });
  symlinkSync(cache, join(dataDir, "images", "bases"));
  let child;
  let stderr = "";
  /** Starts `hangar serve` on `listen`; resolves with its URL and the first start's admin token. */
  const launch = (listen) => {
    child = spawn(bin, ["serve", "--listen", listen], {
      env: hangarEnv(dataDir),
      stdio: ["ignore", "pipe", "pipe"],
    });
    const proc = child;
    proc.stderr.on("data", (d) => (stderr += d));
    const lines = createInterface({ input: proc.stdout });
    return new Promise((ok, fail) => {
      let adminToken = null;
      const timer = setTimeout(() => fail(new Error(`hangar serve did not start in 60 s:\n${stderr}`)), 60_000);
      proc.on("exit", (code) => fail(new Error(`hangar serve exited (${code}) before listening:\n${stderr}`)));
      lines.on("line", (line) => {
        const m = /--token (\S+)/.exec(line);
        if (line.trim().startsWith("hangar login --server") && m) adminToken = m[1];
        const u = /^hangar listening on (\S+)/.exec(line);
        if (u) {
          clearTimeout(timer);
          ok({ url: u[1], adminToken });
        }
      });
    });
  };
  /** Stops the server (SIGTERM, then SIGKILL after 10 s). */
  const halt = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const gone = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await Promise.race([gone, new Promise((r) => setTimeout(r, 10_000))]);
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
  };
  const started = await launch("127.0.0.1:0");
  if (!started.adminToken) throw new Error("hangar serve printed no admin token");
  return {
    url: started.url,
    adminToken: started.adminToken,
    dataDir,
    stderr: () => stderr,
    /** Creates a user and returns their token. */
    addUser(login) {
      const out = execFileSync(bin, ["user", "add", login, "--json"], { env: hangarEnv(dataDir) });
      return JSON.parse(out.toString()).token;
    },
    /** An API call as `token`; a string body is sent as it is (a recipe), anything else as JSON. */
    async api(token, method, path, body) {
      const res = await fetch(started.url + path, {
        signal: AbortSignal.timeout(20 * 60_000),
        method,
        headers: { Authorization: `Bearer ${token}`, "Content-Type": typeof body === "string" ? "application/toml" : "application/json" },
        body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
      });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : null };
    },
    /** Stops the server and starts it again on the same address and data (sandboxes
     * outlive it; open WebSockets see it go). Resolves once it listens again. */
    async restart({ downMs = 0 } = {}) {
      await halt();
      if (downMs) await new Promise((r) => setTimeout(r, downMs));
      await launch(new URL(started.url).host);
    },
    /** Stops the server and removes its sandboxes and data. */
    async stop() {
      await halt();
      const sandboxes = join(dataDir, "sandboxes");
      const ids = existsSync(sandboxes) ? readdirSync(sandboxes) : [];
      if (ids.length) {
        try {
          execFileSync(bin, ["sandbox", "rm", ...ids], { env: hangarEnv(dataDir), stdio: "ignore" });
        } catch {
          // reported by the sandbox suite's own checks; the data goes below
        }
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** A browser context signed in as `token` through the sign-in page. */
export async function signedIn(b, server, token, viewport = { width: 1280, height: 800 }, mobile = false) {
  const ctx = await b.newContext({ viewport, isMobile: mobile, hasTouch: mobile, deviceScaleFactor: mobile ? 2 : 1 });
  const page = await ctx.newPage();
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  await page.goto(server.url + "/sign-in");
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForURL(server.url + "/");
  return { ctx, page };
}

/** Saves a screenshot as a test artifact. */
export async function screenshot(page, name) {
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: false });
}
