// Two people in one session, in two browsers: the same stream live, presence and typing,
// a queued prompt attributed to its author (who alone may edit it), stop, share links,
// errors that keep the unsent prompt; screenshots at desktop and phone sizes.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { browser, screenshot, signedIn, startServer } from "./harness.mjs";

let server;
let b;

before(async () => {
  b = await browser();
  server = await startServer("sessions");
});

after(async () => {
  await b?.close();
  await server?.stop();
});

/** The highest "part N of the answer to prompt P" a page shows. */
async function lastPart(page, prompt) {
  const text = await page.locator("[data-testid=transcript]").innerText();
  const parts = [...text.matchAll(new RegExp(`part (\\d+) of the answer to prompt ${prompt}\\.`, "g"))].map((m) => Number(m[1]));
  return parts.length ? Math.max(...parts) : -1;
}

async function waitForPart(page, prompt, n) {
  await page.waitForFunction(
    ([p, k]) => document.querySelector("[data-testid=transcript]")?.textContent?.includes(`part ${k} of the answer to prompt ${p}.`),
    [prompt, n],
    { timeout: 30_000 },
  );
}

test("two users in one session see one live stream, queue, typing, stop and share", { timeout: 180_000 }, async () => {
  const bobToken = server.addUser("bob");
  const alice = await signedIn(b, server, server.adminToken);
  const bob = await signedIn(b, server, bobToken, { width: 390, height: 844 }, true);

  // Alice starts a session from the new-session page; the scripted agent streams slowly.
  await alice.page.click("text=New session >> nth=0");
  await alice.page.fill("#repo", "acme/app");
  await alice.page.fill("#prompt", "find the flaky test deltas=400 delay_ms=100 tools=1");
  await alice.page.click("button[type=submit]");
  await alice.page.waitForURL(/\/sessions\/ses-/);
  const sessionUrl = alice.page.url();
  await waitForPart(alice.page, 1, 2);

  // Bob opens it from the list, filtered by author.
  await bob.page.goto(server.url + "/?author=admin");
  await bob.page.click("[data-testid=sessions] a");
  await bob.page.waitForURL(sessionUrl);
  await waitForPart(bob.page, 1, 1);
  // Live, not only the backlog: both see parts that did not exist when Bob arrived.
  const seen = await lastPart(bob.page, 1);
  await waitForPart(bob.page, 1, seen + 3);
  await waitForPart(alice.page, 1, seen + 3);

  // Both are here, each sees the other.
  for (const p of [alice.page, bob.page]) {
    await p.locator("[data-testid=participants]", { hasText: "bob" }).waitFor();
    await p.locator("[data-testid=participants]", { hasText: "admin" }).waitFor();
  }

  // Bob types: Alice sees it; Bob's prompt is queued behind Alice's and attributed to him.
  await bob.page.fill("[data-testid=prompt]", "");
  await bob.page.type("[data-testid=prompt]", "then update the docs deltas=2 delay_ms=0 tools=0");
  await alice.page.locator("[data-testid=typing]", { hasText: "bob is typing" }).waitFor();
  await bob.page.click("[data-testid=send]");
  await bob.page.waitForFunction(() => document.querySelector("[data-testid=prompt]")?.value === "");
  for (const p of [alice.page, bob.page]) {
    const item = p.locator("[data-testid=queued]");
    await item.waitFor();
    assert.equal(await item.locator("[data-testid=queued-author]").innerText(), "bob");
    assert.match(await item.locator("[data-testid=queued-text]").innerText(), /then update the docs/);
  }
  // Only its author may change it.
  assert.equal(await alice.page.locator("[data-testid=queued] >> text=Edit").count(), 0);
  await bob.page.click("[data-testid=queued] >> text=Edit");
  await bob.page.fill("[data-testid=queued] textarea", "then update the docs and the changelog deltas=2 delay_ms=0 tools=0");
  await bob.page.click("[data-testid=queued] >> text=Save");
  await alice.page.locator("[data-testid=queued-text]", { hasText: "and the changelog" }).waitFor();

  // A prompt the server refuses (over 64 KiB) shows the error and stays in the box.
  const huge = "x".repeat(70_000);
  await alice.page.fill("[data-testid=prompt]", huge);
  await alice.page.click("[data-testid=send]");
  await alice.page.locator("[data-testid=prompt-error]").waitFor();
  assert.equal((await alice.page.inputValue("[data-testid=prompt]")).length, huge.length);
  await alice.page.fill("[data-testid=prompt]", "");

  await screenshot(alice.page, "session-desktop");
  await screenshot(bob.page, "session-phone");

  // Alice stops the agent: her prompt ends `stopped` and Bob's starts, for both of them.
  await alice.page.click("[data-testid=stop]");
  for (const p of [alice.page, bob.page]) {
    await p.locator("[data-testid=turn]").first().locator("[data-testid=outcome]", { hasText: "stopped" }).waitFor();
    const second = p.locator("[data-testid=turn]").nth(1);
    await second.locator("[data-testid=outcome]", { hasText: "done" }).waitFor();
    assert.equal(await second.locator("[data-testid=turn-author]").innerText(), "bob");
    assert.match(await second.innerText(), /and the changelog/);
    await p.locator("[data-testid=status]", { hasText: "idle" }).waitFor();
  }
  assert.equal(await alice.page.locator("[data-testid=queued]").count(), 0);
  // A repository that is not registered has no branch: the diff says so.
  await alice.page.click("[data-testid=show-diff]");
  await alice.page.locator("[data-testid=diff-note]").waitFor();

  // A view-only share link opens the session for a guest, who cannot prompt.
  await alice.page.click("[data-testid=share]");
  await alice.page.click("[data-testid=share-view]");
  const link = await alice.page.inputValue("[data-testid=share-url]");
  assert.match(link, /\/sessions\/ses-[^#]+#share=hgs_/);
  const guestCtx = await b.newContext();
  const guest = await guestCtx.newPage();
  await guest.goto(link);
  await guest.locator("[data-testid=turn]").nth(1).locator("[data-testid=outcome]", { hasText: "done" }).waitFor();
  assert.ok(!guest.url().includes("hgs_"), "the token leaves the address bar");
  await guest.fill("[data-testid=prompt]", "let me in");
  await guest.click("[data-testid=send]");
  await guest.locator("[data-testid=prompt-error]").waitFor();
  assert.equal(await guest.inputValue("[data-testid=prompt]"), "let me in");

  // The sessions list at phone width.
  await bob.page.goto(server.url + "/");
  await bob.page.locator("[data-testid=sessions] a").first().waitFor();
  await screenshot(bob.page, "sessions-phone");
  await alice.page.goto(server.url + "/");
  await alice.page.locator("[data-testid=sessions] a").first().waitFor();
  await screenshot(alice.page, "sessions-desktop");

  await guestCtx.close();
  await alice.ctx.close();
  await bob.ctx.close();
});

test("a reconnect resumes after the last event without gaps or repeats", { timeout: 120_000 }, async () => {
  const alice = await signedIn(b, server, server.adminToken);
  // Every session WebSocket goes through the test, which can cut the first one.
  const sockets = [];
  await alice.page.routeWebSocket(/\/api\/sessions\/[^/]+\/ws/, (ws) => {
    ws.connectToServer();
    sockets.push({ url: ws.url(), ws });
  });
  const created = await server.api(server.adminToken, "POST", "/api/sessions", {
    repo: "acme/app",
    prompt: "count deltas=60 delay_ms=50 tools=0",
  });
  assert.equal(created.status, 201);
  await alice.page.goto(`${server.url}/sessions/${created.body.id}`);
  await waitForPart(alice.page, 1, 5);
  // Drop the connection mid-stream; the page reconnects with after_seq = the last seq it has.
  sockets[0].ws.close({ code: 4000, reason: "cut by the test" });
  await alice.page.locator("[data-testid=outcome]", { hasText: "done" }).waitFor({ timeout: 60_000 });
  assert.ok(sockets.length >= 2, "the page reconnected");
  assert.match(sockets[0].url, /after_seq=0&/);
  const resumed = Number(new URL(sockets[1].url).searchParams.get("after_seq"));
  assert.ok(resumed >= 6, `resumed after seq ${resumed}, past what it had shown`);
  const text = await alice.page.locator("[data-testid=model-text]").innerText();
  const expected = Array.from({ length: 60 }, (_, i) => `part ${i} of the answer to prompt 1. `).join("").trim();
  assert.equal(text.trim(), expected);
  await alice.ctx.close();
});

test("sign-in refuses a bad token and keeps what was typed", { timeout: 60_000 }, async () => {
  const ctx = await b.newContext();
  const page = await ctx.newPage();
  await page.goto(server.url + "/sessions/new");
  await page.waitForURL(/\/sign-in\?next=/);
  await page.fill("#token", "hgr_not_a_real_token");
  await page.click("button[type=submit]");
  await page.locator(".error", { hasText: "not valid" }).waitFor();
  assert.equal(await page.inputValue("#token"), "hgr_not_a_real_token");
  await page.fill("#token", server.adminToken);
  await page.click("button[type=submit]");
  await page.waitForURL(server.url + "/sessions/new");
  await ctx.close();
});
