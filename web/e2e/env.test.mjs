// An environment in the browser: two people open its terminal, each gets a shell in the
// sandbox that echoes what they type and runs Python 3.9 (Debian bullseye); each sees
// the other; its files and repository beside the terminal; the terminal reconnecting
// after the server restarts; screenshots at desktop and phone sizes.

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

/** Runs a shell command in the environment's sandbox through the API. */
async function sh(command) {
  const r = await server.api(server.adminToken, "POST", `/api/sandboxes/${env.sandbox}/exec`, { shell: command, cwd: "/root" });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.exit_code, 0, JSON.stringify(r.body));
}

test("beside the terminal: the environment's files and its repository", { timeout: 120_000 }, async () => {
  await sh(
    [
      "mkdir -p proj",
      "printf 'print(\"hello from hangar\")\\n' > proj/hello.py",
      "head -c 2097152 /dev/zero > big.bin",
      "git init -q -b main",
      "git add proj",
      "git -c user.name=Ann -c user.email=ann@example.com commit -qm 'First commit'",
      "echo '# changed' >> proj/hello.py",
    ].join(" && "),
  );
  const alice = await signedIn(b, server, server.adminToken);
  await alice.page.goto(`${server.url}/envs/${env.id}`);
  const files = alice.page.locator("[data-testid=env-files]");
  // The working directory (/root without a repository) is listed; folders open, files show.
  await files.locator("[data-testid=files-path]", { hasText: "root" }).waitFor();
  await files.locator("button", { hasText: "proj/" }).click();
  await files.locator("button", { hasText: "hello.py" }).click();
  await files.locator("[data-testid=file-text]", { hasText: 'print("hello from hangar")' }).waitFor();
  await screenshot(alice.page, "env-files-desktop");
  // Up again; a file over the view's limit says so inline.
  await files.locator("button", { hasText: "← /root/proj" }).click();
  await files.locator("button", { hasText: /^\.\.$/ }).click();
  await files.locator("button", { hasText: "big.bin" }).click();
  await files.locator(".error", { hasText: "up to 1048576 bytes" }).waitFor();

  // The repository: branch, short status, last commits.
  await alice.page.click("[role=tab] >> text=Repository");
  const repo = alice.page.locator("[data-testid=env-repo]");
  await repo.locator("[data-testid=repo-branch]", { hasText: "main" }).waitFor();
  await repo.locator("[data-testid=repo-status]", { hasText: "M proj/hello.py" }).waitFor();
  await repo.locator("[data-testid=repo-status]", { hasText: "?? big.bin" }).waitFor();
  await repo.locator("[data-testid=repo-commits]", { hasText: "First commit" }).waitFor();
  await screenshot(alice.page, "env-repo-desktop");

  const phone = await signedIn(b, server, server.adminToken, { width: 390, height: 844 }, true);
  await phone.page.goto(`${server.url}/envs/${env.id}`);
  await phone.page.locator("[data-testid=env-files] button", { hasText: "proj/" }).click();
  await phone.page.locator("[data-testid=env-files] button", { hasText: "hello.py" }).click();
  await phone.page.locator("[data-testid=file-text]", { hasText: "hello from hangar" }).waitFor();
  await phone.page.locator("[data-testid=file-text]").scrollIntoViewIfNeeded();
  await screenshot(phone.page, "env-files-phone");
  await phone.ctx.close();
  await alice.ctx.close();
});

test("the terminal says when its connection drops and reconnects to a new shell", { timeout: 120_000 }, async () => {
  const alice = await signedIn(b, server, server.adminToken);
  await alice.page.goto(`${server.url}/envs/${env.id}`);
  const state = alice.page.locator("[data-testid=terminal-state]");
  await state.filter({ hasText: /^connected$/ }).waitFor();
  await waitForScreen(alice.page, /^root@\S+:~#\s*$/m);
  await alice.page.locator("[data-testid=terminal]").click();
  await alice.page.keyboard.type("echo before-$((1+1))");
  await alice.page.keyboard.press("Enter");
  await waitForScreen(alice.page, /^before-2\s*$/m);

  // The server restarts (the sandbox outlives it); the page says so and comes back.
  const restarting = server.restart({ downMs: 1500 });
  await state.filter({ hasText: /disconnected|reconnecting/ }).waitFor();
  await waitForScreen(alice.page, /\[disconnected: .*reconnecting…\]/);
  await restarting;
  await state.filter({ hasText: /^connected$/ }).waitFor({ timeout: 30_000 });
  await waitForScreen(alice.page, /\[reconnected: this is a new shell/);
  await alice.page.keyboard.type("echo after-$((2+2))");
  await alice.page.keyboard.press("Enter");
  await waitForScreen(alice.page, /^after-4\s*$/m);
  await screenshot(alice.page, "env-reconnected");

  // A shell that exits is not reconnected by itself; New shell starts another.
  await alice.page.keyboard.type("exit");
  await alice.page.keyboard.press("Enter");
  await state.filter({ hasText: "the shell exited (0)" }).waitFor();
  await alice.page.click("text=New shell");
  await state.filter({ hasText: /^connected$/ }).waitFor();
  await alice.ctx.close();
});

test("removing the environment ends the terminal's retries with the reason", { timeout: 60_000 }, async () => {
  const alice = await signedIn(b, server, server.adminToken);
  await alice.page.goto(`${server.url}/envs/${env.id}`);
  const state = alice.page.locator("[data-testid=terminal-state]");
  await state.filter({ hasText: /^connected$/ }).waitFor();
  const removed = await server.api(server.adminToken, "DELETE", `/api/environments/${env.id}`);
  assert.equal(removed.status, 200, JSON.stringify(removed.body));
  env = null;
  // Its sandbox goes first, then its record: the page may see either.
  await alice.page.locator("main > .error", { hasText: /no environment|sandbox is not running/ }).waitFor();
  await state.filter({ hasText: /^disconnected$/ }).waitFor();
  await alice.page.locator("text=New shell").waitFor();
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
