// The images and stats pages in the browser: a registered repository (a small local git
// repository with a recipe on the host base) is built from the images page, whose build
// view shows the log as it runs and the outcome; a second build while one runs is
// refused inline; the new image is current. The stats page shows the session funnel,
// who is prompting and the warm pool. Screenshots at desktop and phone sizes.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { browser, scratch, screenshot, signedIn, startServer } from "./harness.mjs";

let server;
let b;
let repoDir;

const PHONE = [{ width: 390, height: 844 }, true];

before(async () => {
  b = await browser();
  // No scheduled rebuilds: the builds here are the ones the test starts.
  server = await startServer("pages", "[images]\nrebuild_every_s = 0\n");
  repoDir = scratch("pages-repo");
  const git = (...args) => execFileSync("git", ["-C", repoDir, ...args], { stdio: "pipe" });
  git("init", "-q", "-b", "main");
  writeFileSync(join(repoDir, "README.md"), "# app\n");
  git("add", "-A");
  git("-c", "user.name=Ann", "-c", "user.email=ann@example.com", "commit", "-qm", "First commit");
  const reg = await server.api(server.adminToken, "POST", "/api/repos", { name: "acme/app", url: repoDir });
  assert.equal(reg.status, 201, JSON.stringify(reg.body));
  const recipe = 'base = "host"\n[[setup]]\nname = "greet"\nrun = "echo building-the-app-image; sleep 3; echo greeted"\n';
  const put = await server.api(server.adminToken, "PUT", "/api/repos/acme/app/recipe", recipe);
  assert.equal(put.status, 200, JSON.stringify(put.body));
});

after(async () => {
  await b?.close();
  await server?.stop();
  if (repoDir) rmSync(repoDir, { recursive: true, force: true });
});

/** Waits until build `id` has finished; returns it. */
async function finished(id) {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const r = await server.api(server.adminToken, "GET", `/api/images/builds/${id}`);
    if (r.body.status !== "running") return r.body;
    if (Date.now() > deadline) assert.fail(`build ${id} still running: ${JSON.stringify(r.body)}`);
    await new Promise((ok) => setTimeout(ok, 250));
  }
}

test("a build started on the images page shows its log and makes the image current", { timeout: 180_000 }, async () => {
  const alice = await signedIn(b, server, server.adminToken);
  await alice.page.click("header nav >> text=Images");
  await alice.page.waitForURL(server.url + "/images");
  await alice.page.locator("[data-testid=start-build] select[name=repo]", { hasText: "acme/app" }).waitFor();
  await alice.page.click("[data-testid=start-build] button[type=submit]");
  await alice.page.waitForURL(/\/images\/builds\/bld-/);
  const buildId = alice.page.url().split("/").pop();

  // The log refreshes while the build runs: its first line appears before the outcome.
  await alice.page.locator("[data-testid=build-log]", { hasText: "building-the-app-image" }).waitFor({ timeout: 60_000 });
  await alice.page.locator("[data-testid=build-status]", { hasText: "succeeded" }).waitFor({ timeout: 60_000 });
  await alice.page.locator("[data-testid=build-log]", { hasText: "greeted" }).waitFor();
  await alice.page.locator("[data-testid=build-steps]", { hasText: "greet" }).waitFor();
  const built = await finished(buildId);
  assert.equal(built.status, "succeeded");
  assert.equal(built.trigger, "api");
  await screenshot(alice.page, "build-desktop");

  // Back on the list: the build, and its image as the repository's current one.
  await alice.page.click("text=← Images and builds");
  await alice.page.locator("[data-testid=builds]", { hasText: "succeeded" }).waitFor();
  const images = alice.page.locator("[data-testid=images] .image-group", { hasText: "acme/app" });
  await images.locator("li", { hasText: built.image }).locator(".badge", { hasText: "current" }).waitFor();

  // A second build while one runs is refused, and the page says so. A new commit makes
  // the setup step run again (not from the cache), so the build takes seconds.
  writeFileSync(join(repoDir, "CHANGES.md"), "second\n");
  execFileSync("git", ["-C", repoDir, "add", "-A"]);
  execFileSync("git", ["-C", repoDir, "-c", "user.name=Ann", "-c", "user.email=ann@example.com", "commit", "-qm", "Second"]);
  const running = await server.api(server.adminToken, "POST", "/api/images/builds", { repo: "acme/app" });
  assert.equal(running.status, 202, JSON.stringify(running.body));
  await alice.page.click("[data-testid=start-build] button[type=submit]");
  await alice.page.locator("[data-testid=start-build] .error", { hasText: "being built already" }).waitFor();
  assert.equal(alice.page.url(), server.url + "/images");
  await screenshot(alice.page, "images-desktop");

  const phone = await signedIn(b, server, server.adminToken, ...PHONE);
  await phone.page.goto(server.url + "/images");
  await phone.page.locator("[data-testid=images] .badge", { hasText: "current" }).waitFor();
  await screenshot(phone.page, "images-phone");
  await phone.page.goto(`${server.url}/images/builds/${buildId}`);
  await phone.page.locator("[data-testid=build-log]", { hasText: "greeted" }).waitFor();
  await screenshot(phone.page, "build-phone");
  await finished(running.body.id);

  // A build the server does not know is an error on the page.
  await alice.page.goto(`${server.url}/images/builds/bld-000000000000`);
  await alice.page.locator(".error", { hasText: "no build" }).waitFor();
  await phone.ctx.close();
  await alice.ctx.close();
});

test("the stats page shows sessions, who is prompting and the warm pool", { timeout: 60_000 }, async () => {
  const made = await server.api(server.adminToken, "POST", "/api/sessions", { repo: "acme/scratch", prompt: "hello deltas=2" });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const alice = await signedIn(b, server, server.adminToken);
  await alice.page.click("header nav >> text=Stats");
  await alice.page.waitForURL(server.url + "/stats");
  await alice.page.locator("[data-testid=stat-sessions] .value", { hasText: /^1$/ }).waitFor();
  await alice.page.locator("[data-testid=stat-prompting] .value", { hasText: /^1$/ }).waitFor();
  await alice.page.locator("[data-testid=stat-prompting]", { hasText: "admin" }).waitFor();
  await alice.page.locator("[data-testid=stat-agent-share] .value", { hasText: "–" }).waitFor();
  assert.equal(await alice.page.locator("[data-testid=usage-chart] .bar").count(), 30);
  await alice.page.locator("[data-testid=pool-hits] .value", { hasText: /^\d+$/ }).waitFor();
  await screenshot(alice.page, "stats-desktop");
  const phone = await signedIn(b, server, server.adminToken, ...PHONE);
  await phone.page.goto(server.url + "/stats");
  await phone.page.locator("[data-testid=stat-sessions] .value", { hasText: /^1$/ }).waitFor();
  // Nothing overflows the phone's width.
  const wide = await phone.page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(wide <= 390, `the page is ${wide}px wide`);
  await screenshot(phone.page, "stats-phone");
  await phone.ctx.close();
  await alice.ctx.close();
});
