// An environment in the browser: two people open its terminal, each gets a shell in the
// sandbox that echoes what they type and runs Python 3.9 (Debian bullseye); each sees
// the other; screenshots at desktop and phone sizes.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { browser, screenshot, signedIn, startServer } from "./harness.mjs";

let server;
let b;
let env;

before(async () => {
  b = await browser();
  server = await startServer("env");
  // The first environment of a suite builds its base image: this can take minutes.
  const res = await server.api(server.adminToken, "POST", "/api/environments", { name: "e2e-py", python: "3.9" });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  env = res.body;
});

after(async () => {
  if (env) await server.api(server.adminToken, "DELETE", `/api/environments/${env.id}`);
  await b?.close();
  await server?.stop();
});

/** The terminal's visible text. */
const screen = (page) => page.locator("[data-testid=terminal] .xterm-rows").innerText();

async function waitForScreen(page, pattern) {
  const deadline = Date.now() + 30_000;
  let text = "";
  while (Date.now() < deadline) {
    text = await screen(page);
    if (pattern.test(text)) return text;
    await page.waitForTimeout(100);
  }
  assert.fail(`the terminal never showed ${pattern}; it shows:\n${text}`);
}

test("the terminal echoes input and runs Python 3.9; everyone sees who is there", { timeout: 180_000 }, async () => {
  assert.equal(env.python, "3.9.2");
  const bobToken = server.addUser("bob");
  const alice = await signedIn(b, server, server.adminToken);
  const bob = await signedIn(b, server, bobToken, { width: 390, height: 844 }, true);

  await alice.page.goto(server.url + "/envs");
  await alice.page.click("text=e2e-py");
  await alice.page.waitForURL(`${server.url}/envs/${env.id}`);
  await alice.page.locator("[data-testid=terminal-state]", { hasText: "connected" }).waitFor();
  await waitForScreen(alice.page, /^root@\S+:~#\s*$/m);

  await alice.page.locator("[data-testid=terminal]").click();
  await alice.page.keyboard.type("echo hello-$((6*7)) && python3 --version");
  await waitForScreen(alice.page, /echo hello-\$\(\(6\*7\)\) && python3 --version/);
  await alice.page.keyboard.press("Enter");
  await waitForScreen(alice.page, /^hello-42\s*$/m);
  await waitForScreen(alice.page, /^Python 3\.9\.2\s*$/m);

  await bob.page.goto(`${server.url}/envs/${env.id}`);
  await bob.page.locator("[data-testid=terminal-state]", { hasText: "connected" }).waitFor();
  for (const p of [alice.page, bob.page]) {
    await p.locator("[data-testid=env-participants]", { hasText: "admin" }).waitFor();
    await p.locator("[data-testid=env-participants]", { hasText: "bob" }).waitFor();
  }
  // Bob has his own shell in the same sandbox: he sees what Alice's shell wrote to disk.
  await alice.page.keyboard.type("echo shared > /tmp/note");
  await alice.page.keyboard.press("Enter");
  await bob.page.locator("[data-testid=terminal]").click();
  await bob.page.keyboard.type("cat /tmp/note");
  await bob.page.keyboard.press("Enter");
  await waitForScreen(bob.page, /^shared\s*$/m);

  // A guest with the environment's share link gets a terminal too, and is seen.
  assert.match(env.share_path, new RegExp(`^/envs/${env.id}#share=hgs_`));
  const guestCtx = await b.newContext();
  const guest = await guestCtx.newPage();
  await guest.goto(server.url + env.share_path);
  await guest.locator("[data-testid=terminal-state]", { hasText: "connected" }).waitFor();
  await alice.page.locator("[data-testid=env-participants]", { hasText: "guest-" }).waitFor();
  await guest.locator("[data-testid=terminal]").click();
  await guest.keyboard.type("cat /tmp/note");
  await guest.keyboard.press("Enter");
  await waitForScreen(guest, /^shared\s*$/m);
  await guestCtx.close();

  await screenshot(alice.page, "env-desktop");
  await screenshot(bob.page, "env-phone");

  // Bob leaves: Alice sees only herself.
  await bob.ctx.close();
  await alice.page.waitForFunction(() => !document.querySelector("[data-testid=env-participants]")?.textContent?.includes("bob"));

  // The shell exiting is shown.
  await alice.page.keyboard.type("exit");
  await alice.page.keyboard.press("Enter");
  await alice.page.locator("[data-testid=terminal-state]", { hasText: "the shell exited (0)" }).waitFor();
  await alice.ctx.close();
});

test("an unknown environment, or one that cannot be made, is an error on the page", { timeout: 60_000 }, async () => {
  const alice = await signedIn(b, server, server.adminToken);
  await alice.page.goto(`${server.url}/envs`);
  await alice.page.fill("[data-testid=new-env] input[name=name]", "no spaces allowed");
  await alice.page.click("[data-testid=new-env] button[type=submit]");
  await alice.page.locator("[data-testid=new-env] .error", { hasText: "environment name" }).waitFor();
  assert.equal(await alice.page.inputValue("[data-testid=new-env] input[name=name]"), "no spaces allowed");
  await alice.page.goto(`${server.url}/envs/env-doesnotexist`);
  await alice.page.locator(".error", { hasText: "no environment" }).waitFor();
  await alice.ctx.close();
});
