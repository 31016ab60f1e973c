// Unit tests of web/js/connection.js's RetryTimer (pure: fake timers and
// randomness), run by Node with the browser tests: how the web client's
// outbox and draft saves wait after a retryable failure. And Connection's
// requests on a fake socket: how many reads it has in flight at once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Connection, RetryTimer, backoffCapMs, retryAfterDelayMs, kBackoffBaseMs, kBackoffMaxMs, kMaxRetryAfterMs,
  kMaxReadsInFlight,
} from '../../web/js/connection.js';

// A RetryTimer on fake timers; `random` returns `r`.
function fakeTimer(r = 1) {
  const timers = new Map();
  let next = 1;
  let runs = 0;
  const t = new RetryTimer(() => (runs += 1), {
    setTimer: (fn, ms) => {
      timers.set(next, { fn, ms });
      return next++;
    },
    clearTimer: (id) => timers.delete(id),
    random: () => r,
  });
  return {
    t,
    timers,
    runs: () => runs,
    fire() {
      const [id, { fn }] = [...timers.entries()][0];
      timers.delete(id);
      fn();
    },
  };
}

test('failures in a row back off exponentially up to the cap, on top of the server\'s wait', () => {
  const f = fakeTimer(1);
  const waits = [];
  for (let i = 0; i < 10; ++i) waits.push(f.t.failed(0));
  assert.deepEqual(waits.slice(0, 4), [kBackoffBaseMs, 2 * kBackoffBaseMs, 4 * kBackoffBaseMs, 8 * kBackoffBaseMs]);
  assert.equal(waits[9], kBackoffMaxMs);
  assert.equal(backoffCapMs(100), kBackoffMaxMs);
  // retry_after_ms is a floor; the jitter comes on top.
  assert.equal(fakeTimer(0.5).t.failed(1000), 1000 + 0.5 * kBackoffBaseMs);
  // A wait past kMaxRetryAfterMs is clamped, so a stray answer cannot stall
  // the outbox (which waits for its pending retry) for longer.
  assert.equal(fakeTimer(0).t.failed(100 * kMaxRetryAfterMs), kMaxRetryAfterMs);
});

test('one retry is pending at a time: a newer failure replaces it, and it runs once', () => {
  const f = fakeTimer(1);
  f.t.failed(0);
  f.t.failed(0);
  f.t.failed(0);
  assert.equal(f.timers.size, 1, 'three failures left more than one retry chain');
  assert.equal(f.t.pending, true);
  f.fire();
  assert.equal(f.runs(), 1);
  assert.equal(f.t.pending, false);
});

test('a success starts the backoff over; cancel drops the pending retry', () => {
  const f = fakeTimer(1);
  f.t.failed(0);
  f.t.failed(0);
  f.t.succeeded();
  assert.equal(f.t.failed(0), kBackoffBaseMs);
  f.t.cancel();
  assert.equal(f.timers.size, 0);
  assert.equal(f.t.pending, false);
  assert.equal(f.runs(), 0);
});

test('a reconnect the server timed waits at least its retry_after_ms and at most twice it, plus the base', () => {
  assert.equal(retryAfterDelayMs(60_000, () => 0), 60_000);
  assert.equal(retryAfterDelayMs(60_000, () => 1), 120_000 + kBackoffBaseMs);
  const waits = Array.from({ length: 1000 }, () => retryAfterDelayMs(1000));
  assert.ok(waits.every((w) => w >= 1000 && w <= 2000 + kBackoffBaseMs));
  assert.ok(Math.max(...waits) - Math.min(...waits) > 500, 'spread over the window, not all at once');
  assert.equal(retryAfterDelayMs(24 * 3600 * 1000, () => 0), kMaxRetryAfterMs, 'a day is clamped');
});

// A Connection whose socket is a fake that records what is sent (Node has
// no window or WebSocket of its own: the least of them is stubbed).
function fakeConnection(random = Math.random) {
  globalThis.window ??= { addEventListener() {} };
  globalThis.WebSocket ??= { OPEN: 1 };
  const conn = new Connection({ url: 'ws://unused', random });
  const sent = [];
  conn.ws = { readyState: 1, send: (text) => sent.push(JSON.parse(text)) };
  return { conn, sent };
}

test('reads the server counts are sent at most kMaxReadsInFlight at a time; the rest wait for answers', async () => {
  const { conn, sent } = fakeConnection();
  const answers = [];
  for (let i = 0; i < kMaxReadsInFlight + 10; ++i) answers.push(conn.request('history', { conversation_id: 1 }));
  conn.request('send', { conversation_id: 1, client_id: 'c', body: 'x' });  // not a counted read: goes at once
  assert.equal(sent.length, kMaxReadsInFlight + 1);
  assert.equal(sent.filter((f) => f.type === 'history').length, kMaxReadsInFlight);
  // Each answer (a response or an error) lets one waiting read go.
  const refused = assert.rejects(answers[1], { code: 'not_member' });
  conn.settle({ type: 'response', id: sent[0].id, result: { n: 0 } });
  conn.settle({ type: 'error', id: sent[1].id, code: 'not_member', message: 'no' });
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(sent.filter((f) => f.type === 'history').length, kMaxReadsInFlight + 2);
  assert.deepEqual(await answers[0], { n: 0 });
  await refused;
  // Answering everything sends and settles every one of them, in order.
  for (let i = 2; i < sent.length; ++i) {
    if (sent[i].type === 'history') conn.settle({ type: 'response', id: sent[i].id, result: { n: i } });
    await new Promise((r) => setTimeout(r, 0));
  }
  const history = sent.filter((f) => f.type === 'history');
  assert.equal(history.length, kMaxReadsInFlight + 10);
  assert.equal(new Set(history.map((f) => f.id)).size, history.length, 'a read was sent twice');
  await Promise.all(answers.slice(2));
  assert.equal(conn.readsInFlight, 0);
  for (const p of conn.pending.values()) clearTimeout(p.timer);
});

test('reads waiting when the socket drops are refused as disconnected, not left hanging', async () => {
  const { conn, sent } = fakeConnection();
  const answers = [];
  for (let i = 0; i < kMaxReadsInFlight + 3; ++i) answers.push(conn.request('sync', { after: 0 }));
  assert.equal(sent.length, kMaxReadsInFlight);
  conn.teardown();
  const results = await Promise.allSettled(answers);
  assert.ok(results.every((r) => r.status === 'rejected' && r.reason.code === 'disconnected'));
  assert.equal(conn.readsInFlight, 0);
  assert.equal(sent.length, kMaxReadsInFlight, 'a waiting read was sent on a dropped socket');
});

test('a read refused as a flood anyway is sent again after the server\'s wait', async () => {
  const { conn, sent } = fakeConnection(() => 0); // no jitter: exactly the server's wait
  const answer = conn.request('snapshot', { messages: 0 });
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(sent.length, 1);
  conn.settle({ type: 'error', id: sent[0].id, code: 'rate_limited', message: 'busy', retry_after_ms: 20 });
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(sent.length, 1, 'sent again before the server\'s wait');
  await new Promise((r) => setTimeout(r, 40));
  assert.equal(sent.length, 2);
  assert.equal(sent[1].type, 'snapshot');
  conn.settle({ type: 'response', id: sent[1].id, result: { head: 3 } });
  assert.deepEqual(await answer, { head: 3 });
  assert.equal(conn.readsInFlight, 0);
  for (const p of conn.pending.values()) clearTimeout(p.timer);
});

test('reads refused as a flood together come back spread over the jitter, not together', async () => {
  const { conn, sent } = fakeConnection(() => 0.5); // half of each range: 20 + 10 + kBackoffBaseMs / 2
  const answer = conn.request('sync', { after: 0 });
  await new Promise((r) => setTimeout(r, 0));
  conn.settle({ type: 'error', id: sent[0].id, code: 'rate_limited', message: 'busy', retry_after_ms: 20 });
  await new Promise((r) => setTimeout(r, 40));
  assert.equal(sent.length, 1, 'sent again at the bare server\'s wait, with no jitter');
  await new Promise((r) => setTimeout(r, 30 + kBackoffBaseMs / 2));
  assert.equal(sent.length, 2);
  conn.settle({ type: 'response', id: sent[1].id, result: { events: [] } });
  assert.deepEqual(await answer, { events: [] });
  for (const p of conn.pending.values()) clearTimeout(p.timer);
});
