// Shared set-up of the browser tests: a real parleyd on a free port (its
// own temporary data directory, serving this repository's web/), Debian's
// chromium driven by playwright-core, and a watcher per browser context that
// records console errors and warnings, page errors and failed requests.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const kRepoRoot = resolve(here, '..', '..');
export const kWebRoot = join(kRepoRoot, 'web');
export const kChromium = process.env.PARLEY_CHROMIUM || '/usr/bin/chromium';
export const kChromiumArgs = ['--no-sandbox', '--disable-gpu', '--disable-background-networking'];
export const kPhoneViewport = { width: 390, height: 780 };
const kServerStartTimeoutMs = 20_000;
export const kPassword = 'correct horse battery';

export function parleydPath() {
  const p = process.env.PARLEYD || join(kRepoRoot, 'build', 'asan', 'bin', 'parleyd');
  if (!existsSync(p)) throw new Error(`parleyd not found at ${p} (set PARLEYD)`);
  return p;
}

// Starts parleyd; returns {base, stop()}.
export async function startServer(extraArgs = []) {
  const dir = mkdtempSync(join(tmpdir(), 'parley-browser-'));
  const portFile = join(dir, 'port');
  const proc = spawn(parleydPath(), [
    '--listen', '127.0.0.1:0', '--port-file', portFile, '--data-dir', join(dir, 'data'),
    '--web-root', kWebRoot, '--insecure-fast-password-hashing', '--relaxed-rate-limits',
    '--io-threads', '1', '--hash-threads', '1', '--log-level', 'warn', ...extraArgs,
  ], { stdio: ['ignore', 'ignore', 'inherit'] });
  let exited = null;
  proc.on('exit', (code) => (exited = code));
  const deadline = Date.now() + kServerStartTimeoutMs;
  while (!existsSync(portFile)) {
    if (exited !== null) throw new Error(`parleyd exited with ${exited}`);
    if (Date.now() > deadline) throw new Error('parleyd did not start');
    await sleep(50);
  }
  const port = Number(readFileSync(portFile, 'utf8').trim());
  return {
    base: `http://127.0.0.1:${port}`,
    // A server that accepts connections and answers nothing (stopped), and
    // back.
    pause() {
      proc.kill('SIGSTOP');
    },
    resume() {
      proc.kill('SIGCONT');
    },
    async stop() {
      if (exited === null) {
        proc.kill('SIGCONT'); // a paused server could not take its SIGTERM
        const done = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        await done;
      }
      rmSync(dir, { recursive: true, force: true });
      if (exited !== 0 && exited !== null) throw new Error(`parleyd exited with ${exited}`);
    },
  };
}

export async function launchBrowser() {
  return chromium.launch({ executablePath: kChromium, args: kChromiumArgs, headless: true });
}

// A browser context with a phone-sized viewport whose problems (console
// errors/warnings, uncaught page errors, failed or >= 400 requests) are
// collected in `problems`, each with when it happened (ms since the context
// was made) and, for the page's own messages, the page's address then: what a
// rare failure needs to be traced afterwards.
export async function newContext(browser, base, options = {}) {
  const context = await browser.newContext({ viewport: kPhoneViewport, baseURL: base, ...options });
  const problems = [];
  const t0 = Date.now();
  const at = () => `[+${Date.now() - t0} ms]`;
  const navigationsAtStart = new WeakMap();
  const watchPage = (page) => {
    // Counted at commit too: a request the old document starts between a
    // navigation's start and its commit is aborted by it as well.
    page.on('framenavigated', (frame) => {
      if (frame === page.mainFrame()) countNavigation(page);
    });
    page.on('console', (msg) => {
      if (msg.type() === 'error' || msg.type() === 'warning') {
        problems.push(`console ${msg.type()}: ${msg.text()} ${at()} on ${page.url()}`);
      }
    });
    page.on('pageerror', (err) => problems.push(`page error: ${err.message} ${at()} on ${page.url()}`));
  };
  context.on('page', watchPage);
  context.on('request', (req) => {
    const page = pageOf(req);
    if (!page) return;
    if (req.isNavigationRequest() && req.frame() === page.mainFrame()) countNavigation(page);
    navigationsAtStart.set(req, pageNavigations.get(page) ?? 0);
  });
  context.on('requestfailed', (req) => {
    const error = req.failure()?.errorText;
    const page = pageOf(req);
    const leftBehind = page && navigationsAtStart.has(req) && pageNavigations.get(page) > navigationsAtStart.get(req);
    if (error === 'net::ERR_ABORTED' && leftBehind && isStaticFile(req)) return;
    problems.push(`request failed: ${req.method()} ${req.url()} ${error} ${at()}`);
  });
  context.on('response', (res) => {
    if (res.status() >= 400) problems.push(`HTTP ${res.status()}: ${res.url()} ${at()}`);
  });
  const page = await context.newPage();
  return { context, page, problems };
}

// A navigation (a reload, goAway) aborts what the page it leaves was still
// loading (its icon, say): that is the browser's doing, not the app's. Each
// page counts the navigations it started (a document request of its main
// frame, or goAway's about:blank, which makes no request) and committed; a GET of a static
// file aborted after a navigation that started later than it is not a
// problem. Anything else aborted (the API, a WebSocket) still is.
const pageNavigations = new WeakMap();

function countNavigation(page) {
  pageNavigations.set(page, (pageNavigations.get(page) ?? 0) + 1);
}

// A GET of one of web/'s files (the icon, the manifest), not of the API.
function isStaticFile(req) {
  const path = new URL(req.url()).pathname;
  return req.method() === 'GET' && !/^\/(v1|admin|metrics)(\/|$)/.test(path);
}

// The page a request was made for; null for a service worker's own fetches.
function pageOf(req) {
  try {
    return req.frame().page();
  } catch {
    return null;
  }
}

// The device goes away (its browser leaves the app; IndexedDB is kept).
export async function goAway(page) {
  countNavigation(page);
  await page.goto('about:blank');
}

export async function register(page, username) {
  await page.goto('/');
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(kPassword);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.getByRole('heading', { name: 'Chats' }).waitFor();
  await page.locator('#conn-status[data-state="online"]').waitFor({ state: 'attached' });
}

export async function logIn(page, username) {
  await page.goto('/');
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(kPassword);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { name: 'Chats' }).waitFor();
  await page.locator('#conn-status[data-state="online"]').waitFor({ state: 'attached' });
}

// A link of the main navigation.
export function navLink(page, name) {
  return page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name });
}

// Finds `username` on the contacts screen and opens the chat with them.
export async function openChatWith(page, username) {
  await navLink(page, 'Contacts').click();
  await page.getByLabel('Search users by name').fill(username);
  await page.getByRole('button', { name: 'Search', exact: true }).click();
  await page.getByRole('button', { name: `Message ${username}` }).click();
  await page.locator('#composer').waitFor();
}

export async function send(page, text) {
  await page.locator('#composer').fill(text);
  await page.locator('#composer').press('Enter');
}

// The bodies of the messages shown in the open chat, in order.
export async function bodies(page) {
  return page.locator('ol.messages li .body').allTextContents();
}

export function myMessage(page, text) {
  return page.locator('li.msg.mine', { has: page.locator('.body', { hasText: text }) });
}

let axeSource = null;
// Serious or critical axe-core violations on the current screen.
export async function axeViolations(page) {
  axeSource ??= readFileSync(join(here, 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');
  if (!(await page.evaluate(() => typeof window.axe !== 'undefined'))) await page.evaluate(axeSource);
  const results = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  return results.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).join('; ')}`);
}
