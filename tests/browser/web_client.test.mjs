// Browser tests of the web client (issue 7): Debian's chromium, headless,
// driven by playwright-core, against a real parleyd serving web/. One server
// and one browser for the file; each test uses its own users and contexts.
// Every context must end without console errors or warnings and without
// failed requests, except for the network failures the offline test causes
// on purpose.
import { test, before, after } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, navLink, newContext, register, logIn, openChatWith, send, bodies, myMessage, axeViolations, goAway,
  kPassword,
} from './helpers.mjs';
import { kRequestTimeoutMs } from '../../web/js/connection.js';

const kAdminToken = 'browser-admin-token';
const kOutboxMaxAgeMs = 30 * 24 * 3600 * 1000; // web/js/app.js's
let server;
let browser;
const contexts = [];

before(async () => {
  // Presence: announce going offline after 300 ms (not 5 s), no per-watcher
  // rate limit, so the presence test needs no long waits.
  // The admin API is on for the test that disables an account.
  server = await startServer(['--presence-coalesce-ms', '300', '--presence-min-interval-ms', '0', '--admin-token', kAdminToken]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function user(options) {
  const c = await newContext(browser, server.base, options);
  contexts.push(c);
  return c;
}

function assertClean(...cs) {
  // A copy: the report shows the problems as they were here, not with what a
  // test's clean-up (stopping its server) adds afterwards.
  for (const c of cs) assert.deepEqual([...c.problems], [], 'console errors, warnings or failed requests');
}

async function closeAll(...cs) {
  for (const c of cs) await c.context.close();
}

test('two users find each other and chat; ticks go sent → delivered → read', async () => {
  const alice = await user();
  const bob = await user();
  await register(alice.page, 'alice_t');
  await register(bob.page, 'bob_t');

  // Bob's device is away while Alice writes: the message is only "sent".
  await goAway(bob.page);
  await openChatWith(alice.page, 'bob_t');
  await send(alice.page, 'Hello Bob');
  const mine = myMessage(alice.page, 'Hello Bob');
  await mine.and(alice.page.locator('[data-tick="sent"]')).waitFor();
  assert.equal(await mine.locator('.tick').getAttribute('aria-label'), 'Sent');

  // Bob comes back: his device stores the message and says so.
  await bob.page.goto('/');
  const conv = bob.page.locator('a.conv', { hasText: 'alice_t' });
  await conv.and(bob.page.locator('[data-unread="1"]')).waitFor();
  await mine.and(alice.page.locator('[data-tick="delivered"]')).waitFor();
  assert.equal(await mine.locator('.tick').getAttribute('aria-label'), 'Delivered');

  // Bob opens the chat and reads it.
  await conv.click();
  await bob.page.locator('li.msg.theirs .body', { hasText: 'Hello Bob' }).waitFor();
  await mine.and(alice.page.locator('[data-tick="read"]')).waitFor();
  assert.equal(await mine.locator('.tick').getAttribute('aria-label'), 'Read');
  await navLink(bob.page, 'Chats').click();
  await conv.and(bob.page.locator('[data-unread="0"]')).waitFor();

  // Bob types: Alice sees it; Bob answers.
  await conv.click();
  await bob.page.locator('#composer').pressSequentially('Hi Al');
  await alice.page.locator('#chat-status[data-typing="1"]').waitFor();
  await bob.page.locator('#composer').pressSequentially('ice');
  await bob.page.locator('#composer').press('Enter');
  await alice.page.locator('li.msg.theirs .body', { hasText: 'Hi Alice' }).waitFor();
  await alice.page.locator('#chat-status[data-typing="0"]').waitFor();
  assert.deepEqual(await bodies(alice.page), ['Hello Bob', 'Hi Alice']);
  assertClean(alice, bob);
  await closeAll(alice, bob);
});

test('messages written offline survive a reload and arrive once, in order', async () => {
  const carol = await user();
  const dave = await user();
  await register(carol.page, 'carol_t');
  await register(dave.page, 'dave_t');
  await openChatWith(carol.page, 'dave_t');
  await send(carol.page, 'before going offline');
  await myMessage(carol.page, 'before going offline').and(carol.page.locator('[data-tick="delivered"]')).waitFor();
  await carol.page.waitForFunction(() => document.documentElement.dataset.swReady === '1' && !!navigator.serviceWorker.controller);

  // Cut the network for the page and its service worker alike.
  await carol.context.setOffline(true);
  await carol.context.route('**/*', (route) => route.abort('internetdisconnected'));
  await carol.page.locator('#conn-status[data-state="offline"]').waitFor();
  const offline = ['offline one', 'offline two', 'offline three'];
  for (const text of offline) await send(carol.page, text);
  for (const text of offline) await myMessage(carol.page, text).and(carol.page.locator('[data-tick="pending"]')).waitFor();

  // The app shell comes from the service worker, the outbox from IndexedDB.
  await carol.page.reload();
  await carol.page.locator('#conn-status[data-state="offline"]').waitFor();
  for (const text of offline) await myMessage(carol.page, text).and(carol.page.locator('[data-tick="pending"]')).waitFor();
  assert.deepEqual(await bodies(carol.page), ['before going offline', ...offline]);

  // Back online: sent in order, once.
  await carol.context.unroute('**/*');
  await carol.context.setOffline(false);
  await carol.page.locator('#conn-status[data-state="online"]').waitFor({ state: 'attached' });
  for (const text of offline) await myMessage(carol.page, text).and(carol.page.locator('[data-tick="delivered"], [data-tick="read"]')).waitFor();

  await dave.page.locator('a.conv', { hasText: 'carol_t' }).click();
  await dave.page.locator('li.msg .body', { hasText: 'offline three' }).waitFor();
  const expected = ['before going offline', ...offline];
  assert.deepEqual(await bodies(dave.page), expected);
  // Fresh from the server, on a new device of Dave's: still exactly once.
  const dave2 = await user();
  await logIn(dave2.page, 'dave_t');
  await dave2.page.locator('a.conv', { hasText: 'carol_t' }).click();
  await dave2.page.locator('li.msg .body', { hasText: 'offline three' }).waitFor();
  assert.deepEqual(await bodies(dave2.page), expected);
  const seqs = await dave2.page.locator('ol.messages li').evaluateAll((lis) => lis.map((li) => Number(li.dataset.seq)));
  assert.deepEqual(seqs, [1, 2, 3, 4]);

  // Only the failures the test caused itself.
  const unexpected = carol.problems.filter((p) =>
    !/ERR_INTERNET_DISCONNECTED|net::ERR_FAILED|request failed|WebSocket connection/.test(p));
  assert.deepEqual(unexpected, []);
  assertClean(dave, dave2);
  await closeAll(carol, dave, dave2);
});

async function admin(path) {
  const r = await fetch(`${server.base}/admin/v1/${path}`, { method: 'POST', headers: { authorization: `Bearer ${kAdminToken}` } });
  assert.equal(r.status, 200, `${path}: ${await r.text()}`);
}

test('an account the operator disables says so, keeps what is written, and sends it once enabled', async () => {
  const gwen = await user();
  const hugo = await user();
  await register(gwen.page, 'gwen_t');
  await register(hugo.page, 'hugo_t');
  await openChatWith(gwen.page, 'hugo_t');
  await send(gwen.page, 'before the disable');
  await myMessage(gwen.page, 'before the disable').and(gwen.page.locator('[data-tick="delivered"]')).waitFor();

  // The live connection is closed with 4005: the banner says why.
  await admin('users/gwen_t/disable');
  const banner = gwen.page.locator('#conn-status[data-state="disabled"]');
  await banner.waitFor();
  assert.match(await banner.textContent(), /disabled/);
  await send(gwen.page, 'written while disabled');
  await myMessage(gwen.page, 'written while disabled').and(gwen.page.locator('[data-tick="pending"]')).waitFor();

  // A reload keeps everything and auth's user_disabled brings the banner back.
  await gwen.page.waitForLoadState('networkidle');
  await gwen.page.reload();
  await banner.waitFor();
  await myMessage(gwen.page, 'written while disabled').and(gwen.page.locator('[data-tick="pending"]')).waitFor();
  assert.deepEqual(await bodies(gwen.page), ['before the disable', 'written while disabled']);

  // Enabled: the next connection (a reload here, instead of the server's
  // minute) sends the kept message once.
  await admin('users/gwen_t/enable');
  await gwen.page.waitForLoadState('networkidle');
  await gwen.page.reload();
  await gwen.page.locator('#conn-status[data-state="online"]').waitFor({ state: 'attached' });
  await myMessage(gwen.page, 'written while disabled').and(gwen.page.locator('[data-tick="delivered"], [data-tick="read"]')).waitFor();
  await hugo.page.locator('a.conv', { hasText: 'gwen_t' }).click();
  await hugo.page.locator('li.msg .body', { hasText: 'written while disabled' }).waitFor();
  assert.deepEqual(await bodies(hugo.page), ['before the disable', 'written while disabled']);
  assertClean(gwen, hugo);
  await closeAll(gwen, hugo);
});

test('a second device of the same user sees the history and the same unread counts, until unlinked', async () => {
  const erin = await user();
  const frank = await user();
  await register(erin.page, 'erin_t');
  await register(frank.page, 'frank_t');
  await openChatWith(frank.page, 'erin_t');
  // More than a new device's snapshot holds per conversation (20), so the
  // oldest come from history when the chat is scrolled up.
  const texts = Array.from({ length: 24 }, (_, i) => `message ${i + 1}`);
  for (const text of texts) await send(frank.page, text);
  const conv1 = erin.page.locator('a.conv', { hasText: 'frank_t' });
  await conv1.and(erin.page.locator('[data-unread="24"]')).waitFor();

  const erin2 = await user();
  await logIn(erin2.page, 'erin_t');
  const conv2 = erin2.page.locator('a.conv', { hasText: 'frank_t' });
  await conv2.and(erin2.page.locator('[data-unread="24"]')).waitFor();
  await conv2.click();
  await erin2.page.locator('li.msg .body', { hasText: 'message 24' }).waitFor();
  assert.deepEqual(await bodies(erin2.page), texts.slice(4));
  await erin2.page.locator('.scroller').evaluate((el) => el.scrollTo(0, 0));
  await erin2.page.locator('li.msg .body', { hasText: /^message 1$/ }).waitFor();
  assert.deepEqual(await bodies(erin2.page), texts);
  assert.equal(await erin2.page.getByRole('button', { name: 'Load older messages' }).isHidden(), true);
  // Reading on the second device clears the count on the first.
  await conv1.and(erin.page.locator('[data-unread="0"]')).waitFor();

  // The first device unlinks the second, which is signed out at once.
  await navLink(erin.page, 'Devices').click();
  const devices = erin.page.locator('li[data-device-id]');
  await devices.nth(1).waitFor();
  assert.equal(await devices.count(), 2);
  await devices.filter({ hasNotText: 'this device' }).getByRole('button', { name: /^Unlink/ }).click();
  await erin.page.getByText('Device unlinked.').waitFor();
  await devices.nth(1).waitFor({ state: 'detached' });
  await erin2.page.getByText('This device was signed out.').waitFor();
  await erin2.page.getByLabel('Username').waitFor();
  assertClean(erin, frank, erin2);
  await closeAll(erin, frank, erin2);
});

test('the devices screen shows each device\'s push endpoint and its health', async () => {
  const iris = await user();
  await register(iris.page, 'iris_t');
  // A second device of Iris's registers a webhook push endpoint over its own
  // WebSocket (what a phone app would do), then goes away.
  const registered = await iris.page.evaluate(async (password) => new Promise((resolve, reject) => {
    const ws = new WebSocket(`${location.origin.replace(/^http/, 'ws')}/v1/ws`);
    const send = (id, type, fields) => ws.send(JSON.stringify({ v: 1, id, type, ...fields }));
    ws.onopen = () => send(1, 'login', { username: 'iris_t', password, device_name: 'relay phone', platform: 'android' });
    ws.onmessage = (ev) => {
      const f = JSON.parse(ev.data);
      if (f.type === 'error') reject(new Error(`${f.code}: ${f.message}`));
      if (f.id === 1) send(2, 'register_push', { provider: 'webhook', token: 'http://127.0.0.1:9/hook' });
      if (f.id === 2) {
        ws.close();
        resolve(f.result.provider);
      }
    };
    ws.onerror = () => reject(new Error('websocket error'));
  }), kPassword);
  assert.equal(registered, 'webhook');

  await navLink(iris.page, 'Devices').click();
  const relay = iris.page.locator('li[data-device-id]', { hasText: 'relay phone' });
  await relay.waitFor();
  const health = relay.locator('.push-health');
  assert.equal(await health.textContent(), 'Push: webhook · nothing sent yet');
  assert.equal(await health.getAttribute('data-push-result'), 'none');
  // The browser itself has no push endpoint: no push line.
  const current = iris.page.locator('li[data-device-id]', { hasText: 'this device' });
  assert.equal(await current.locator('.push-health').count(), 0);
  assertClean(iris);
  await closeAll(iris);
});

test('messages from a blocked user never show', async () => {
  const gina = await user();
  const hank = await user();
  await register(gina.page, 'gina_t');
  await register(hank.page, 'hank_t');
  await openChatWith(hank.page, 'gina_t');
  await send(hank.page, 'hello gina');
  const convAtGina = gina.page.locator('a.conv', { hasText: 'hank_t' });
  await convAtGina.click();
  await gina.page.locator('li.msg .body', { hasText: 'hello gina' }).waitFor();

  await gina.page.getByRole('button', { name: 'Block' }).click();
  await gina.page.getByRole('button', { name: 'Unblock' }).waitFor();
  await send(hank.page, 'you cannot see this');
  const withheld = myMessage(hank.page, 'you cannot see this');
  await withheld.and(hank.page.locator('[data-tick="sent"]')).waitFor();

  // Gina cannot write to someone she blocks: her message fails, visibly.
  await send(gina.page, 'gina while blocking');
  const failed = myMessage(gina.page, 'gina while blocking');
  await failed.and(gina.page.locator('[data-tick="failed"]')).waitFor();
  assert.equal(await failed.locator('.tick').getAttribute('aria-label'), 'Not sent: you block this user');
  await failed.getByRole('button', { name: 'Discard' }).click();
  await failed.waitFor({ state: 'detached' });

  await gina.page.getByRole('button', { name: 'Unblock' }).click();
  await gina.page.getByRole('button', { name: 'Block' }).waitFor();
  await send(hank.page, 'after unblock');
  await gina.page.locator('li.msg .body', { hasText: 'after unblock' }).waitFor();
  assert.deepEqual(await bodies(gina.page), ['hello gina', 'after unblock']);
  // Gina read past it, yet Hank's withheld message stays "sent".
  await myMessage(hank.page, 'after unblock').and(hank.page.locator('[data-tick="read"]')).waitFor();
  assert.equal(await withheld.getAttribute('data-tick'), 'sent');
  // Also after a reload (from the store, not from memory).
  await gina.page.reload();
  await gina.page.locator('li.msg .body', { hasText: 'after unblock' }).waitFor();
  assert.deepEqual(await bodies(gina.page), ['hello gina', 'after unblock']);
  assertClean(gina, hank);
  await closeAll(gina, hank);
});

test('every screen passes axe-core (no serious or critical violations)', async () => {
  const ivy = await user();
  const jack = await user();
  const report = {};
  await ivy.page.goto('/');
  await ivy.page.getByLabel('Username').waitFor();
  report.login = await axeViolations(ivy.page);
  await register(ivy.page, 'ivy_t');
  await register(jack.page, 'jack_t');
  await openChatWith(jack.page, 'ivy_t');
  await send(jack.page, 'hi ivy');
  await ivy.page.locator('a.conv', { hasText: 'jack_t' }).waitFor();
  report.chats = await axeViolations(ivy.page);
  await ivy.page.locator('a.conv', { hasText: 'jack_t' }).click();
  await ivy.page.locator('li.msg .body', { hasText: 'hi ivy' }).waitFor();
  report.chat = await axeViolations(ivy.page);
  await navLink(ivy.page, 'Contacts').click();
  await ivy.page.getByLabel('Search users by name').fill('jack');
  await ivy.page.getByRole('button', { name: 'Search', exact: true }).click();
  await ivy.page.getByRole('button', { name: 'Add jack_t' }).click();
  await ivy.page.locator('#contact-list li').waitFor();
  report.contacts = await axeViolations(ivy.page);
  // Block and unblock from the contacts screen; remove the contact.
  await ivy.page.locator('#contact-list').getByRole('button', { name: 'Block jack_t' }).click();
  await ivy.page.locator('#blocked-list li', { hasText: 'jack_t' }).waitFor();
  await ivy.page.locator('#blocked-list').getByRole('button', { name: 'Unblock jack_t' }).click();
  await ivy.page.getByText('You block nobody.').waitFor();
  await ivy.page.locator('#contact-list').getByRole('button', { name: 'Remove jack_t' }).click();
  await ivy.page.getByText('No contacts yet.').waitFor();
  await navLink(ivy.page, 'Devices').click();
  await ivy.page.locator('li[data-device-id]').first().waitFor();
  report.devices = await axeViolations(ivy.page);
  await navLink(ivy.page, 'Profile').click();
  await ivy.page.getByLabel('Display name').waitFor();
  report.profile = await axeViolations(ivy.page);
  assert.deepEqual(report, { login: [], chats: [], chat: [], contacts: [], devices: [], profile: [] });
  assertClean(ivy, jack);
  await closeAll(ivy, jack);
});

test('keyboard only: log in, open a chat and send', async () => {
  const kim = await user();
  const lee = await user();
  await register(kim.page, 'kim_t');
  await register(lee.page, 'lee_t');
  await openChatWith(lee.page, 'kim_t');
  await send(lee.page, 'ping kim');

  const kbd = await user();
  const { page } = kbd;
  await page.goto('/');
  await page.locator('#username:focus').waitFor();
  await page.keyboard.type('kim_t');
  await page.keyboard.press('Tab');
  await page.keyboard.type('correct horse battery');
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Chats' }).waitFor();
  await page.locator('a.conv', { hasText: 'lee_t' }).waitFor();
  let found = false;
  for (let i = 0; i < 12 && !found; i++) {
    await page.keyboard.press('Tab');
    found = await page.evaluate(() => document.activeElement?.matches('a.conv') ?? false);
  }
  assert.ok(found, 'the conversation is reachable with Tab');
  await page.keyboard.press('Enter');
  await page.locator('#composer:focus').waitFor();
  await page.keyboard.type('pong lee');
  await page.keyboard.press('Enter');
  await myMessage(page, 'pong lee').and(page.locator('[data-tick="delivered"], [data-tick="read"]')).waitFor();
  await lee.page.locator('li.msg.theirs .body', { hasText: 'pong lee' }).waitFor();
  assertClean(kim, lee, kbd);
  await closeAll(kim, lee, kbd);
});

test('presence: online dot, last seen after leaving or going to the background, hidden by privacy', async () => {
  const mia = await user();
  const ned = await user();
  await register(mia.page, 'mia_t');
  await register(ned.page, 'ned_t');
  await openChatWith(mia.page, 'ned_t');
  await send(mia.page, 'are you there?');
  const conv = ned.page.locator('a.conv', { hasText: 'mia_t' });
  await conv.locator('.dot.online').waitFor();
  await conv.click();
  const status = ned.page.locator('#chat-status');
  await status.filter({ hasText: /^online$/ }).waitFor();

  // Mia's tab goes to the background: she is offline, with a last seen.
  await mia.page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await status.filter({ hasText: /^last seen / }).waitFor();
  // Back in the foreground: online again.
  await mia.page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { value: 'visible', configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await status.filter({ hasText: /^online$/ }).waitFor();

  // Mia shows her presence to nobody: Ned sees neither online nor last seen.
  await navLink(mia.page, 'Profile').click();
  await mia.page.getByLabel('Show my online status and last seen to').selectOption('nobody');
  await mia.page.getByRole('button', { name: 'Save privacy' }).click();
  await mia.page.getByText('Privacy saved.').waitFor();
  await status.filter({ hasText: /^$/ }).waitFor();
  await navLink(ned.page, 'Chats').click();
  await conv.locator('.dot.away').waitFor();

  // Back to everyone; then Mia leaves altogether: last seen.
  await mia.page.getByLabel('Show my online status and last seen to').selectOption('everyone');
  await mia.page.getByRole('button', { name: 'Save privacy' }).click();
  await conv.locator('.dot.online').waitFor();
  await goAway(mia.page);
  await conv.locator('.dot.away').waitFor();
  await conv.click();
  await status.filter({ hasText: /^last seen / }).waitFor();
  assertClean(mia, ned);
  await closeAll(mia, ned);
});

test('heartbeats: the client pings at the announced interval and keeps one connection', async () => {
  // A server of its own with a short heartbeat: 1 s interval, dropped after
  // 3 s of silence.
  const hb = await startServer(['--heartbeat-interval-ms', '1000', '--heartbeat-timeout-ms', '3000']);
  try {
    const c = await newContext(browser, hb.base);
    const sockets = [];
    let pings = 0;
    c.page.on('websocket', (ws) => {
      sockets.push(ws);
      ws.on('framesent', (f) => {
        if (typeof f.payload === 'string' && JSON.parse(f.payload).type === 'ping') pings += 1;
      });
    });
    await register(c.page, 'olga_t');
    const start = sockets.length;
    const deadline = Date.now() + 20_000;
    while (pings < 4 && Date.now() < deadline) await c.page.waitForTimeout(250);
    assert.ok(pings >= 4, `pings sent: ${pings}`);
    // Four intervals, longer than the timeout: still the same connection.
    assert.equal(sockets.length, start);
    assert.equal(await c.page.locator('#conn-status').getAttribute('data-state'), 'online');
    assertClean(c);
    await c.context.close();
  } finally {
    await hb.stop();
  }
});

// Requests over a WebSocket of their own (a separate device of `username`),
// run inside `page`: what another client would do.
async function viaProtocol(page, username, requests, { registerFirst = false } = {}) {
  return page.evaluate(async ({ username, password, requests, registerFirst }) => {
    const ws = new WebSocket(`ws://${location.host}/v1/ws`);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = reject;
    });
    const waiting = new Map();
    ws.onmessage = (ev) => {
      const f = JSON.parse(ev.data);
      if ((f.type === 'response' || f.type === 'error') && waiting.has(f.id)) waiting.get(f.id)(f);
    };
    let id = 0;
    const call = (type, fields) => new Promise((resolve) => {
      id += 1;
      waiting.set(id, resolve);
      ws.send(JSON.stringify({ v: 1, id, type, ...fields }));
    });
    if (registerFirst) await call('register', { username, password });
    const out = [await call('login', { username, password, device_name: 'script', platform: 'test' })];
    for (const r of requests) out.push(await call(r.type, r.fields));
    ws.close();
    return out;
  }, { username, password: kPassword, requests, registerFirst });
}

// Polls `sync` from `after` over a script connection of `username` (on a
// page of the server's origin) until the trim job has passed that cursor.
// Returns the last answer's code ('cursor_too_old' once it has).
async function pollUntilCursorTooOld(page, username, after) {
  return page.evaluate(async ({ username, password, after }) => {
    const ws = new WebSocket(`ws://${location.host}/v1/ws`);
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    const waiting = new Map();
    ws.onmessage = (ev) => {
      const f = JSON.parse(ev.data);
      if ((f.type === 'response' || f.type === 'error') && waiting.has(f.id)) waiting.get(f.id)(f);
    };
    let id = 0;
    const call = (type, fields) => new Promise((resolve) => {
      id += 1;
      waiting.set(id, resolve);
      ws.send(JSON.stringify({ v: 1, id, type, ...fields }));
    });
    await call('login', { username, password, device_name: 'script', platform: 'test' });
    const deadline = Date.now() + 15_000;
    let last = '';
    while (Date.now() < deadline) {
      const f = await call('sync', { after });
      last = f.code || 'ok';
      if (last === 'cursor_too_old') break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    ws.close();
    return last;
  }, { username, password: kPassword, after });
}

test('drafts follow the user to a second device; edits and deletes show and survive a reload', async () => {
  const pia = await user();
  const quinn = await user();
  await register(pia.page, 'pia_t');
  await register(quinn.page, 'quinn_t');
  await openChatWith(quinn.page, 'pia_t');
  for (const text of ['first', 'second', 'third']) await send(quinn.page, text);
  await myMessage(quinn.page, 'third').and(quinn.page.locator('[data-tick="delivered"]')).waitFor();

  const pia2 = await user();
  await logIn(pia2.page, 'pia_t');
  await pia.page.locator('a.conv', { hasText: 'quinn_t' }).click();
  await pia.page.locator('li.msg .body', { hasText: 'third' }).waitFor();
  const convId = Number(new URL(pia.page.url()).hash.split('/')[2]);

  // Typed on one device: the other shows it in the list and in the composer.
  await pia.page.locator('#composer').pressSequentially('see you at');
  await pia2.page.locator('a.conv', { hasText: 'Draft: see you at' }).waitFor();
  await pia2.page.locator('a.conv', { hasText: 'quinn_t' }).click();
  assert.equal(await pia2.page.locator('#composer').inputValue(), 'see you at');
  // Changed there: the first device's composer follows (nothing unsaved there).
  await pia2.page.locator('#composer').pressSequentially(' 7');
  await pia.page.waitForFunction(() => document.querySelector('#composer').value === 'see you at 7');
  // While typing, a draft from the other device does not replace the text.
  await pia.page.locator('#composer').pressSequentially('?');
  await viaProtocol(pia2.page, 'pia_t', [{ type: 'set_draft', fields: { conversation_id: convId, text: 'elsewhere' } }]);
  await pia2.page.waitForFunction(() => document.querySelector('#composer').value === 'elsewhere');
  assert.equal(await pia.page.locator('#composer').inputValue(), 'see you at 7?');
  // ...and once saved, it is the newest in server order: it wins everywhere.
  await pia2.page.waitForFunction(() => document.querySelector('#composer').value === 'see you at 7?');
  // Sending clears the draft on every device.
  await pia.page.locator('#composer').press('Enter');
  await pia2.page.locator('li.msg.mine .body', { hasText: 'see you at 7?' }).waitFor();
  await pia2.page.waitForFunction(() => document.querySelector('#composer').value === '');
  assert.equal(await pia.page.locator('#composer').inputValue(), '');

  // Edits and deletes made by another client.
  const answers = await viaProtocol(quinn.page, 'quinn_t', [
    { type: 'edit_message', fields: { conversation_id: convId, seq: 1, client_id: 'e1', body: 'first, edited' } },
    { type: 'delete_message', fields: { conversation_id: convId, seq: 2, for: 'everyone' } },
  ]);
  assert.deepEqual(answers.map((a) => a.type), ['response', 'response', 'response']);
  await viaProtocol(pia2.page, 'pia_t', [{ type: 'delete_message', fields: { conversation_id: convId, seq: 3, for: 'me' } }]);
  for (const page of [pia.page, pia2.page]) {
    await page.locator('li.msg[data-seq="1"] .body', { hasText: 'first, edited' }).waitFor();
    await page.locator('li.msg[data-seq="1"] .edited').waitFor();
    await page.locator('li.msg[data-seq="2"] .body.deleted', { hasText: 'This message was deleted' }).waitFor();
    await page.locator('li.msg[data-seq="3"]').waitFor({ state: 'detached' });
  }
  // The sender sees the same; the message deleted for pia stays for him.
  await quinn.page.locator('li.msg[data-seq="1"] .body', { hasText: 'first, edited' }).waitFor();
  await quinn.page.locator('li.msg[data-seq="2"] .body.deleted').waitFor();
  await quinn.page.locator('li.msg[data-seq="3"] .body', { hasText: 'third' }).waitFor();
  // Stored with the rest: the same after a reload. (The state is saved at
  // most every 150 ms: a reload right after the last event may load the
  // state from before it, whose cursor is before it too, and the sync after
  // the reload applies it again; so each check waits.)
  await pia.page.reload();
  await pia.page.locator('li.msg[data-seq="1"] .body', { hasText: 'first, edited' }).waitFor();
  await pia.page.locator('li.msg[data-seq="2"] .body.deleted').waitFor();
  await pia.page.locator('li.msg[data-seq="3"]').waitFor({ state: 'detached' });
  await pia.page.locator('#conn-status[data-state="online"]').waitFor({ state: 'attached' });
  // Online is shown before the render after the sync: wait for that render
  // rather than reading the DOM at once (message 3 must not come back).
  await pia.page.locator('li.msg[data-seq="3"]').waitFor({ state: 'detached', timeout: 5_000 })
    .catch(() => assert.fail('message 3, deleted for pia, came back'));
  assertClean(pia, quinn, pia2);
  await closeAll(pia, quinn, pia2);
});

// Opens the actions menu of the message with text `text` in `page`'s open
// chat; returns the message (found by its seq: while edited it shows an
// editor instead of its text) and the menu.
async function openActions(page, text) {
  const seq = await page.locator('li.msg', { has: page.locator('.body', { hasText: text }) }).getAttribute('data-seq');
  const msg = page.locator(`li.msg[data-seq="${seq}"]`);
  await msg.getByRole('button', { name: 'Message actions' }).click();
  const menu = msg.getByRole('menu', { name: 'Message actions' });
  await menu.waitFor();
  return { msg, menu };
}

async function menuItems(menu) {
  return menu.getByRole('menuitem').allTextContents();
}

test('a user edits and deletes messages from the chat: the peer and the user\'s other device follow', async () => {
  const rosa = await user();
  const sam = await user();
  await register(rosa.page, 'rosa_t');
  await register(sam.page, 'sam_t');
  await openChatWith(rosa.page, 'sam_t');
  for (const text of ['typo here', 'regret this', 'only for me']) await send(rosa.page, text);
  await myMessage(rosa.page, 'only for me').and(rosa.page.locator('[data-tick="delivered"]')).waitFor();
  const rosa2 = await user();
  await logIn(rosa2.page, 'rosa_t');
  await rosa2.page.locator('a.conv', { hasText: 'sam_t' }).click();
  await sam.page.locator('a.conv', { hasText: 'rosa_t' }).click();
  for (const page of [rosa2.page, sam.page]) await page.locator('li.msg .body', { hasText: 'only for me' }).waitFor();

  // The peer may only delete Rosa's message for himself.
  const atSam = await openActions(sam.page, 'typo here');
  assert.deepEqual(await menuItems(atSam.menu), ['Delete for me']);
  await sam.page.keyboard.press('Escape');
  await atSam.menu.waitFor({ state: 'detached' });

  // Edit: Escape leaves the text as it was; Enter saves the new one.
  let { msg, menu } = await openActions(rosa.page, 'typo here');
  assert.deepEqual(await menuItems(menu), ['Edit', 'Delete for everyone', 'Delete for me']);
  const chatReport = await axeViolations(rosa.page);
  await menu.getByRole('menuitem', { name: 'Edit' }).click();
  const editor = msg.getByRole('textbox', { name: 'Edit message' });
  assert.equal(await editor.inputValue(), 'typo here');
  await editor.fill('abandoned');
  await editor.press('Escape');
  await editor.waitFor({ state: 'detached' });
  assert.equal(await msg.locator('.body').textContent(), 'typo here');
  assert.ok(await msg.getByRole('button', { name: 'Message actions' }).evaluate((b) => b === document.activeElement));
  ({ msg, menu } = await openActions(rosa.page, 'typo here'));
  await menu.getByRole('menuitem', { name: 'Edit' }).click();
  chatReport.push(...await axeViolations(rosa.page));
  await editor.fill('typo fixed');
  await editor.press('Enter');
  for (const page of [rosa.page, rosa2.page, sam.page]) {
    const edited = page.locator('li.msg', { has: page.locator('.body', { hasText: /^typo fixed$/ }) });
    await edited.locator('.edited', { hasText: 'edited' }).waitFor();
  }

  // Delete for everyone asks first; cancelled, nothing happens.
  ({ msg, menu } = await openActions(rosa.page, 'regret this'));
  await menu.getByRole('menuitem', { name: 'Delete for everyone' }).click();
  const confirm = msg.getByRole('group', { name: 'Delete this message for everyone?' });
  chatReport.push(...await axeViolations(rosa.page));
  await confirm.getByRole('button', { name: 'Cancel' }).click();
  await confirm.waitFor({ state: 'detached' });
  ({ msg, menu } = await openActions(rosa.page, 'regret this'));
  await menu.getByRole('menuitem', { name: 'Delete for everyone' }).click();
  await confirm.getByRole('button', { name: 'Delete', exact: true }).click();
  for (const page of [rosa.page, rosa2.page, sam.page]) {
    await page.locator('li.msg .body.deleted', { hasText: 'This message was deleted' }).waitFor();
    assert.equal(await page.locator('li.msg .body', { hasText: 'regret this' }).count(), 0);
  }

  // Delete for me, keyboard only: gone on both of Rosa's devices, kept for Sam.
  const hide = rosa.page.locator('li.msg', { has: rosa.page.locator('.body', { hasText: 'only for me' }) });
  await hide.getByRole('button', { name: 'Message actions' }).focus();
  await rosa.page.keyboard.press('Enter');
  await hide.getByRole('menuitem', { name: 'Edit' }).and(rosa.page.locator(':focus')).waitFor();
  await rosa.page.keyboard.press('End');
  await hide.getByRole('menuitem', { name: 'Delete for me' }).and(rosa.page.locator(':focus')).waitFor();
  await rosa.page.keyboard.press('Enter');
  for (const page of [rosa.page, rosa2.page]) await page.locator('li.msg .body', { hasText: 'only for me' }).waitFor({ state: 'detached' });
  assert.deepEqual(await bodies(rosa2.page), ['typo fixed', 'This message was deleted']);
  assert.deepEqual(await bodies(sam.page), ['typo fixed', 'This message was deleted', 'only for me']);
  // Stored: the same after a reload.
  await rosa.page.reload();
  await rosa.page.locator('li.msg .body', { hasText: 'typo fixed' }).waitFor();
  assert.deepEqual(await bodies(rosa.page), ['typo fixed', 'This message was deleted']);
  assert.deepEqual(chatReport, []);
  assertClean(rosa, sam, rosa2);
  await closeAll(rosa, sam, rosa2);
});

test('after the edit window the menu offers no edit, and a late edit shows the server\'s refusal', async () => {
  // A server of its own whose edit window is 4 s (long enough to open the
  // editor on a busy machine, short enough to wait for).
  const kEditWindowMs = 4_000;
  const srv = await startServer(['--edit-window-ms', String(kEditWindowMs)]);
  try {
    const tara = await newContext(browser, srv.base);
    const uma = await newContext(browser, srv.base);
    await register(tara.page, 'tara_t');
    await register(uma.page, 'uma_t');
    await openChatWith(tara.page, 'uma_t');
    await send(tara.page, 'quick one');
    await myMessage(tara.page, 'quick one').and(tara.page.locator('[data-seq]')).waitFor();
    let { msg, menu } = await openActions(tara.page, 'quick one');
    const ts = Date.parse(await msg.locator('time').getAttribute('datetime'));
    await menu.getByRole('menuitem', { name: 'Edit' }).click();
    const editor = msg.getByRole('textbox', { name: 'Edit message' });
    await editor.fill('too late');
    // The window closes while the editor is open: the server refuses.
    await tara.page.waitForTimeout(Math.max(0, ts + kEditWindowMs + 200 - Date.now()));
    await editor.press('Enter');
    await tara.page.getByRole('status').filter({ hasText: 'Too late to edit this message' }).waitFor();
    assert.equal(await editor.inputValue(), 'too late'); // nothing typed is lost
    await msg.getByRole('button', { name: 'Cancel' }).click();
    assert.equal(await msg.locator('.body').textContent(), 'quick one');
    ({ menu } = await openActions(tara.page, 'quick one'));
    assert.deepEqual(await menuItems(menu), ['Delete for everyone', 'Delete for me']);
    await uma.page.locator('a.conv', { hasText: 'tara_t' }).click();
    await uma.page.locator('li.msg .body', { hasText: 'quick one' }).waitFor();
    assert.equal(await uma.page.locator('li.msg .edited').count(), 0);
    assertClean(tara, uma);
    await closeAll(tara, uma);
  } finally {
    await srv.stop();
  }
});

test('a rate-limited send waits the server\'s time: messages written meanwhile queue behind it, each sent once', async () => {
  const srv = await startServer(['--rate-limit', 'send_per_device=1/1']);
  try {
    const ivy = await newContext(browser, srv.base);
    const jon = await newContext(browser, srv.base);
    await register(ivy.page, 'ivy_t');
    await register(jon.page, 'jon_t');
    await openChatWith(ivy.page, 'jon_t');
    const texts = ['one', 'two', 'three'];
    for (const text of texts) await send(ivy.page, text);
    for (const text of texts) {
      await myMessage(ivy.page, text).and(ivy.page.locator('[data-tick="sent"], [data-tick="delivered"], [data-tick="read"]')).waitFor();
    }
    await jon.page.locator('a.conv', { hasText: 'ivy_t' }).click();
    await jon.page.locator('li.msg .body', { hasText: 'three' }).waitFor();
    assert.deepEqual(await bodies(jon.page), texts);
    // One token a second: "two" is refused once, then "three" once after it
    // (each waited out); a compose during a wait does not send early.
    const metrics = await (await fetch(`${srv.base}/metrics`)).text();
    const refused = Number(/^parley_errors_total\{code="rate_limited"\} (\d+)/m.exec(metrics)?.[1] ?? 0);
    assert.equal(refused, 2, 'rate_limited answers');
    assertClean(ivy, jon);
    await closeAll(ivy, jon);
  } finally {
    await srv.stop();
  }
});

test('a device away longer than the server keeps its stream gets cursor_too_old, takes a snapshot and shows everything', async () => {
  // A server of its own that keeps stream entries for 1 s, and protects
  // them for devices seen within 1 s (docs/operations.md "Stream trimming").
  const srv = await startServer(['--stream-retention-s', '1', '--stream-device-grace-s', '1',
    '--stream-trim-interval-ms', '50']);
  try {
    const wes = await newContext(browser, srv.base);
    const xia = await newContext(browser, srv.base);
    await register(wes.page, 'wes_t');
    await register(xia.page, 'xia_t');
    await openChatWith(wes.page, 'xia_t');
    await send(wes.page, 'first');
    await xia.page.locator('a.conv', { hasText: 'wes_t' }).click();
    await xia.page.locator('li.msg .body', { hasText: 'first' }).waitFor();
    // xia's browser goes away, its IndexedDB (and cursor) kept.
    await goAway(xia.page);
    const [, ping] = await viaProtocol(wes.page, 'xia_t', [{ type: 'ping', fields: {} }]);
    const awayHead = ping.result.head; // xia's cursor is at most this
    await send(wes.page, 'second');
    await send(wes.page, 'third');
    await myMessage(wes.page, 'third').and(wes.page.locator('[data-seq]')).waitFor();
    // Wait, through a script client of xia's, until the trim job has passed
    // xia's cursor: a sync from there answers cursor_too_old.
    const code = await pollUntilCursorTooOld(wes.page, 'xia_t', awayHead);
    assert.equal(code, 'cursor_too_old');
    // xia comes back: the web client takes a snapshot and shows all three.
    await xia.page.goto('/');
    await xia.page.locator('a.conv', { hasText: 'wes_t' }).click();
    await xia.page.locator('li.msg .body', { hasText: 'third' }).waitFor();
    assert.deepEqual(await bodies(xia.page), ['first', 'second', 'third']);
    // It got there through cursor_too_old (the script's poll answered one).
    const metrics = await (await fetch(`${srv.base}/metrics`)).text();
    const tooOld = Number(/^parley_sync_cursor_too_old_total (\d+)/m.exec(metrics)?.[1] ?? 0);
    assert.ok(tooOld >= 2, `parley_sync_cursor_too_old_total ${tooOld}`);
    // And follows the stream from the snapshot's head.
    await send(wes.page, 'fourth');
    await xia.page.locator('li.msg .body', { hasText: 'fourth' }).waitFor();
    assert.deepEqual(await bodies(xia.page), ['first', 'second', 'third', 'fourth']);
    assertClean(wes, xia);
    await closeAll(wes, xia);
  } finally {
    await srv.stop();
  }
});

test('a send left unanswered while the outbox age passes is not failed: the answer to the next attempt decides', async () => {
  const srv = await startServer();
  try {
    const kim = await newContext(browser, srv.base);
    const lou = await newContext(browser, srv.base);
    await kim.page.clock.install(); // time flows; the test jumps it and runs timers on
    let sends = 0; // send requests kim's page writes
    kim.page.on('websocket', (ws) => ws.on('framesent', (f) => {
      if (typeof f.payload === 'string' && f.payload.includes('"type":"send"')) sends += 1;
    }));
    await register(kim.page, 'kim_t');
    await register(lou.page, 'lou_t');
    await openChatWith(kim.page, 'lou_t');
    // Every failed tick kim's screen ever shows, however briefly.
    await kim.page.evaluate(() => {
      window.failedTicks = 0;
      new MutationObserver(() => {
        window.failedTicks += document.querySelectorAll('[data-tick="failed"]').length;
      }).observe(document.body, { subtree: true, childList: true, attributes: true });
    });
    // The server stops answering; kim's send goes out and hangs.
    srv.pause();
    await send(kim.page, 'late');
    await myMessage(kim.page, 'late').and(kim.page.locator('[data-tick="pending"]')).waitFor();
    // A month and a day pass (the system time jumps; no timer fires), then
    // the send's request timeout runs out on the socket, still up, and its
    // retry (within the first backoff, 0.5 s) meets the outbox's 30 days:
    // the message goes out again instead of failing.
    const now = await kim.page.evaluate(() => Date.now());
    await kim.page.clock.setSystemTime(now + kOutboxMaxAgeMs + 24 * 3600 * 1000);
    await kim.page.clock.runFor(kRequestTimeoutMs + 1_000);
    for (let waited = 0; sends < 2 && waited < 5_000; waited += 50) await sleep(50);
    assert.equal(sends, 2, 'the retry after the timeout was not sent');
    // The server answers again: the first send was stored, the retry gets
    // its seq back (same client id), and nothing was failed on the way.
    srv.resume();
    await myMessage(kim.page, 'late').and(kim.page.locator('[data-tick="sent"], [data-tick="delivered"], [data-tick="read"]')).waitFor();
    assert.equal(await kim.page.evaluate(() => window.failedTicks), 0, 'the message showed failed before it was sent');
    await lou.page.locator('a.conv', { hasText: 'kim_t' }).click();
    await lou.page.locator('li.msg .body', { hasText: 'late' }).waitFor();
    assert.deepEqual(await bodies(lou.page), ['late']);
    assertClean(kim, lou);
    await closeAll(kim, lou);
  } finally {
    await srv.stop();
  }
});

test('disappearing messages: the timer control reaches the peer, and an expired message leaves both screens and IndexedDB', async () => {
  const una = await user();
  const vic = await user();
  await register(una.page, 'una_t');
  await register(vic.page, 'vic_t');
  await openChatWith(una.page, 'vic_t');
  await send(una.page, 'before the timer');
  await vic.page.locator('a.conv', { hasText: 'una_t' }).click();
  await vic.page.locator('li.msg .body', { hasText: 'before the timer' }).waitFor();
  const convId = Number(new URL(vic.page.url()).hash.split('/')[2]);
  // The control: set on one side, the other side's control follows.
  const timerOf = (page) => page.getByLabel('Disappearing messages');
  await timerOf(una.page).selectOption('3600');
  await vic.page.waitForFunction(() => document.querySelector('#disappearing').value === '3600');
  // A short timer (set by another client of vic's), then a message under it.
  await viaProtocol(vic.page, 'vic_t', [{ type: 'set_disappearing', fields: { conversation_id: convId, seconds: 1 } }]);
  await una.page.waitForFunction(() => document.querySelector('#disappearing').value === '1');
  await send(una.page, 'vanishing words');
  // Shown, then gone at expires_at on both sides.
  for (const page of [una.page, vic.page]) {
    await page.locator('li.msg .body.deleted', { hasText: 'This message expired' }).waitFor({ timeout: 10_000 });
  }
  assert.deepEqual(await bodies(vic.page), ['before the timer', 'This message expired']);
  // The text is gone from what the page stores, also after a reload.
  await vic.page.reload();
  await vic.page.locator('li.msg .body.deleted', { hasText: 'This message expired' }).waitFor();
  for (const page of [una.page, vic.page]) {
    const stored = await page.evaluate(async () => JSON.stringify(await (await import('/js/db.js')).kv.get('state')));
    assert.equal(stored.includes('vanishing'), false, 'the expired text is not in IndexedDB');
    assert.equal(stored.includes('before the timer'), true);
  }
  assertClean(una, vic);
  await closeAll(una, vic);
});

test('selective sync: a summarised conversation shows its count, loads when opened, and stays consistent across reloads', async () => {
  // Alice's browser selects only her most recent conversation (and the ones
  // she opens); the test hook stands in for kSyncRecentConversations.
  const alice = await user();
  await alice.context.addInitScript(() => {
    window.parleySyncRecentForTest = 1;
  });
  await register(alice.page, 'alice_sel');
  const list = (peer) => alice.page.locator('a.conv', { hasText: peer });
  const row = async (peer) => {
    const a = list(peer);
    return { unread: await a.getAttribute('data-unread'), summarised: await a.getAttribute('data-summarised'),
      lastSeq: await a.getAttribute('data-last-seq'), preview: await a.locator('.conv-preview').textContent() };
  };
  const say = async (who, convId, ...bodiesToSend) => {
    const answers = await viaProtocol(alice.page, who, bodiesToSend.map((body) =>
      ({ type: 'send', fields: { conversation_id: convId, client_id: `${who}-${body.replace(/\W/g, '-')}`, body } })));
    for (const a of answers) assert.equal(a.type, 'response', JSON.stringify(a));
  };
  const openWith = async (who) => {
    const [, r] = await viaProtocol(alice.page, who, [{ type: 'open_conversation', fields: { username: 'alice_sel' } }],
      { registerFirst: true });
    return r.result.conversation.conversation_id;
  };

  // Bob's conversation is the first: with nothing selected yet, it is added.
  const withBob = await openWith('bob_sel');
  await say('bob_sel', withBob, 'bob one');
  await list('bob_sel').and(alice.page.locator('[data-summarised="0"]')).filter({ hasText: 'bob one' }).waitFor();
  // Carol's is not selected: her messages come as summaries, live.
  const withCarol = await openWith('carol_sel');
  await say('carol_sel', withCarol, 'carol one', 'carol two', 'carol three');
  await list('carol_sel').and(alice.page.locator('[data-unread="3"][data-last-seq="3"]')).waitFor();
  assert.deepEqual(await row('carol_sel'),
    { unread: '3', summarised: '1', lastSeq: '3', preview: '3 new messages · open to load' });
  const cached = () => alice.page.evaluate((id) => {
    const c = window.parleyDebug.state.convs[id];
    return { seqs: c.messages.map((m) => m.seq), summarised: c.summarised, unread: c.unread };
  }, withCarol);
  assert.deepEqual(await cached(), { seqs: [], summarised: true, unread: 3 }, 'no message of a summarised conversation is fetched');

  // Bob writes again (his is the most recent now); a reload keeps Carol's summary.
  await say('bob_sel', withBob, 'bob two');
  await list('bob_sel').filter({ hasText: 'bob two' }).waitFor();
  await alice.page.reload();
  await alice.page.locator('#conn-status[data-state="online"]').waitFor({ state: 'attached' });
  await list('bob_sel').filter({ hasText: 'bob two' }).waitFor();
  assert.deepEqual(await row('carol_sel'),
    { unread: '3', summarised: '1', lastSeq: '3', preview: '3 new messages · open to load' });
  // A live message of the unselected conversation updates its summary.
  await say('carol_sel', withCarol, 'carol four');
  await list('carol_sel').and(alice.page.locator('[data-unread="4"][data-last-seq="4"]')).waitFor();
  assert.equal((await row('carol_sel')).preview, '4 new messages · open to load');

  // Opening it loads its messages, once each, and reads them.
  await list('carol_sel').click();
  await alice.page.locator('li.msg .body', { hasText: 'carol four' }).waitFor();
  assert.deepEqual(await bodies(alice.page), ['carol one', 'carol two', 'carol three', 'carol four']);
  await alice.page.locator('#chat-loading').waitFor({ state: 'hidden' });
  // Selected now: the next message arrives in full, into the open chat.
  await say('carol_sel', withCarol, 'carol five');
  await alice.page.locator('li.msg .body', { hasText: 'carol five' }).waitFor();
  assert.deepEqual(await bodies(alice.page), ['carol one', 'carol two', 'carol three', 'carol four', 'carol five']);
  await navLink(alice.page, 'Chats').click();
  await list('carol_sel').and(alice.page.locator('[data-unread="0"][data-summarised="0"]')).filter({ hasText: 'carol five' }).waitFor();

  // A reload keeps it all, and selects the opened conversation again: a new
  // message arrives in full even though Bob's is the most recent one.
  await say('bob_sel', withBob, 'bob three');
  await list('bob_sel').filter({ hasText: 'bob three' }).waitFor();
  await alice.page.reload();
  await alice.page.locator('#conn-status[data-state="online"]').waitFor({ state: 'attached' });
  assert.deepEqual(await cached(), { seqs: [1, 2, 3, 4, 5], summarised: false, unread: 0 });
  await say('carol_sel', withCarol, 'carol six');
  await list('carol_sel').and(alice.page.locator('[data-summarised="0"][data-unread="1"]')).filter({ hasText: 'carol six' }).waitFor();
  assert.deepEqual(await cached(), { seqs: [1, 2, 3, 4, 5, 6], summarised: false, unread: 1 });
  assert.deepEqual(await alice.page.evaluate(() => window.parleyDebug.state.opened), [withCarol]);
  await list('carol_sel').click();
  await alice.page.locator('li.msg .body', { hasText: 'carol six' }).waitFor();
  assert.deepEqual(await bodies(alice.page),
    ['carol one', 'carol two', 'carol three', 'carol four', 'carol five', 'carol six']);
  assertClean(alice);
  await closeAll(alice);
});

test('selective sync after cursor_too_old: the snapshot keeps the opened conversations selected and the cache exact', async () => {
  // As the old-cursor test: stream entries kept for 1 s (docs/operations.md "Stream trimming").
  const srv = await startServer(['--stream-retention-s', '1', '--stream-device-grace-s', '1',
    '--stream-trim-interval-ms', '50']);
  try {
    const yan = await newContext(browser, srv.base);
    await yan.context.addInitScript(() => {
      window.parleySyncRecentForTest = 1;
    });
    await register(yan.page, 'yan_t');
    const list = (peer) => yan.page.locator('a.conv', { hasText: peer });
    const openWith = async (who) => {
      const [, r] = await viaProtocol(yan.page, who, [{ type: 'open_conversation', fields: { username: 'yan_t' } }],
        { registerFirst: true });
      return r.result.conversation.conversation_id;
    };
    let sent = 0;
    const say = async (who, convId, ...texts) => {
      const answers = await viaProtocol(yan.page, who, texts.map((body) =>
        ({ type: 'send', fields: { conversation_id: convId, client_id: `${who}-${(sent += 1)}`, body } })));
      for (const a of answers) assert.equal(a.type, 'response', JSON.stringify(a));
    };
    const withZed = await openWith('zed_t'); // selected when created (the selection was empty)
    const withWu = await openWith('wu_t'); // summaries from here on
    await say('wu_t', withWu, 'wu one', 'wu two');
    await list('wu_t').and(yan.page.locator('[data-unread="2"][data-summarised="1"]')).waitFor();
    // Yan opens Wu's chat (it is selected from now on) and leaves it read.
    await list('wu_t').click();
    await yan.page.locator('li.msg .body', { hasText: 'wu two' }).waitFor();
    await navLink(yan.page, 'Chats').click();
    await list('wu_t').and(yan.page.locator('[data-unread="0"]')).waitFor();

    // Yan's browser goes away while both write; its cursor is trimmed past.
    // A second context on the server's origin speaks for the others.
    await goAway(yan.page);
    const helper = await newContext(browser, srv.base);
    await helper.page.goto('/');
    const [, ping] = await viaProtocol(helper.page, 'yan_t', [{ type: 'ping', fields: {} }]);
    const yanHead = ping.result.head; // Yan's browser applied at most this
    const sendAs = (who, convId, body) => viaProtocol(helper.page, who,
      [{ type: 'send', fields: { conversation_id: convId, client_id: `${who}-${(sent += 1)}`, body } }]);
    await sendAs('wu_t', withWu, 'wu three');
    await sendAs('zed_t', withZed, 'zed one');
    const code = await pollUntilCursorTooOld(helper.page, 'yan_t', yanHead);
    assert.equal(code, 'cursor_too_old');

    // Back: a snapshot rebuilds the copy. Zed's is the most recent; Wu's is
    // selected because Yan opened it, so its next message arrives in full.
    await yan.page.goto('/');
    await yan.page.locator('#conn-status[data-state="online"]').waitFor({ state: 'attached' });
    await list('zed_t').filter({ hasText: 'zed one' }).waitFor();
    await list('wu_t').filter({ hasText: 'wu three' }).waitFor();
    assert.deepEqual(await yan.page.evaluate(() => window.parleyDebug.state.opened), [withWu]);
    await sendAs('wu_t', withWu, 'wu four');
    await list('wu_t').and(yan.page.locator('[data-summarised="0"][data-unread="2"]')).filter({ hasText: 'wu four' }).waitFor();
    await list('wu_t').click();
    await yan.page.locator('li.msg .body', { hasText: 'wu four' }).waitFor();
    assert.deepEqual(await bodies(yan.page), ['wu one', 'wu two', 'wu three', 'wu four']);
    const seqs = await yan.page.evaluate((id) => window.parleyDebug.state.convs[id].messages.map((m) => m.seq), withWu);
    assert.deepEqual(seqs, [1, 2, 3, 4]);
    assertClean(yan, helper);
    await closeAll(yan, helper);
  } finally {
    await srv.stop();
  }
});

test('a head notice (the node was cut off from the other nodes) makes the client sync what its live stream lost', async () => {
  // A server of its own whose heartbeat (whose ping answer carries the head
  // too) does not come within the test.
  const srv = await startServer(['--heartbeat-interval-ms', '60000', '--heartbeat-timeout-ms', '120000']);
  try {
    const lia = await newContext(browser, srv.base);
    const max = await newContext(browser, srv.base);
    // max's WebSocket goes through the test: live events can be lost on the
    // way (as a node's are while Redis is gone), and frames told.
    let losing = false;
    let lostHead = 0;
    let toMax = null;
    await max.page.routeWebSocket(/\/v1\/ws/, (ws) => {
      const server = ws.connectToServer();
      ws.onMessage((m) => server.send(m));
      server.onMessage((m) => {
        const f = typeof m === 'string' ? JSON.parse(m) : null;
        if (losing && f?.type === 'event') {
          lostHead = Math.max(lostHead, f.event.user_seq);
          return;
        }
        ws.send(m);
      });
      toMax = ws;
    });
    await register(lia.page, 'lia_t');
    await register(max.page, 'max_t');
    await openChatWith(lia.page, 'max_t');
    await send(lia.page, 'before the cut');
    await max.page.locator('a.conv', { hasText: 'lia_t' }).click();
    await max.page.locator('li.msg .body', { hasText: 'before the cut' }).waitFor();
    losing = true;
    await send(lia.page, 'lost on the way');
    await myMessage(lia.page, 'lost on the way').and(lia.page.locator('[data-tick="sent"], [data-tick="delivered"], [data-tick="read"]')).waitFor();
    for (let waited = 0; lostHead === 0 && waited < 5_000; waited += 50) await sleep(50);
    assert.ok(lostHead > 0, 'max was sent no event to lose');
    await sleep(300);
    assert.deepEqual(await bodies(max.page), ['before the cut'], 'an event the test dropped reached the page');
    // What the node sends its devices after a cut: their user's head.
    toMax.send(JSON.stringify({ v: 1, type: 'head', head: lostHead }));
    await max.page.locator('li.msg .body', { hasText: 'lost on the way' }).waitFor({ timeout: 5_000 });
    assert.deepEqual(await bodies(max.page), ['before the cut', 'lost on the way']);
    assertClean(lia, max);
    await closeAll(lia, max);
  } finally {
    await srv.stop();
  }
});
