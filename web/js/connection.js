// One WebSocket session to parleyd (docs/protocol.md): requests matched to
// answers by id, application-level heartbeats (browsers cannot send
// WebSocket pings), and reconnection with exponential backoff and full
// jitter. It knows frames, not chats: the app decides what to do after each
// (re)connect through the `onOpen` callback and gets every unsolicited frame
// through `onFrame`.
//
// States: "offline" (the browser says there is no network; no attempts until
// it comes back), "connecting", "open" (socket up, before/while the app
// authenticates), "closed" (stopped for good: logout or a revoked token).

export const kDefaultHeartbeatIntervalMs = 25_000; // until auth tells us
export const kDefaultHeartbeatTimeoutMs = 60_000;
export const kRequestTimeoutMs = 30_000;
export const kBackoffBaseMs = 500;
export const kBackoffMaxMs = 30_000;
export const kMaxRetryAfterMs = 600_000; // a larger wait named by the server is clamped to this (as the SDK)
// Close codes of the server (docs/protocol.md, "Close codes") this layer acts on.
export const kCloseShutdown = 4001; // reconnect after retry_after_ms
export const kCloseRevoked = 4002; // the token is gone: stop for good
export const kCloseTryLater = 4003; // reconnect after retry_after_ms
export const kCloseAccountDisabled = 4005; // the token is kept: reconnect after retry_after_ms

// The longest wait, before jitter, after `attempt` failures in a row:
// exponential from kBackoffBaseMs, at most kBackoffMaxMs.
export function backoffCapMs(attempt) {
  return Math.min(kBackoffMaxMs, kBackoffBaseMs * 2 ** Math.min(attempt, 16));
}

// Runs `run` again after a retryable failure: the server's retry_after_ms
// plus full jitter over backoffCapMs of the failures in a row, so a failure
// that names no wait (storage_full, internal, a request timeout) backs off
// instead of being retried every second. One timer at a time: a newer
// failure replaces a pending retry, so every trigger (a compose, a
// reconnect, a Retry click) joins the same chain instead of starting one.
export class RetryTimer {
  // The browser's timers are wrapped: called as this object's methods,
  // setTimeout and clearTimeout throw "Illegal invocation".
  constructor(run, {
    setTimer = (fn, ms) => setTimeout(fn, ms), clearTimer = (id) => clearTimeout(id), random = Math.random,
  } = {}) {
    this.run = run;
    this.setTimer = setTimer;
    this.clearTimer = clearTimer;
    this.random = random;
    this.attempt = 0;
    this.timer = null;
  }

  // Returns the wait chosen, in ms. The server's wait is clamped to
  // kMaxRetryAfterMs, as the connection's is.
  failed(retryAfterMs = 0) {
    const delay = Math.min(retryAfterMs, kMaxRetryAfterMs) + this.random() * backoffCapMs(this.attempt);
    this.attempt += 1;
    this.cancel();
    this.timer = this.setTimer(() => {
      this.timer = null;
      this.run();
    }, delay);
    return delay;
  }

  succeeded() {
    this.attempt = 0;
  }

  cancel() {
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
  }

  get pending() {
    return this.timer !== null;
  }
}

// The wait before reconnecting when the server named one (a close's or an
// answer's retry_after_ms): that wait plus a uniform extra of 0-100 % of it
// (and up to kBackoffBaseMs), so clients told the same spread out.
export function retryAfterDelayMs(retryAfterMs, random = Math.random) {
  const n = Math.min(retryAfterMs, kMaxRetryAfterMs);
  return n + random() * n + random() * kBackoffBaseMs;
}

// Requests the server counts among a connection's reads in flight, and how
// many it lets one connection have unanswered (docs/protocol.md, "Limits").
export const kMaxReadsInFlight = 32;
const kMaxReadRetries = 3; // a counted read refused as rate_limited is sent again this many times
export const kCountedReads = new Set([
  'sync', 'history', 'snapshot', 'list_conversations', 'list_contacts', 'list_blocked', 'list_devices',
  'search_users', 'search_messages', 'message_info', 'push_settings', 'subscribe_presence',
]);

export class ProtocolError extends Error {
  constructor(frame) {
    super(frame.message || frame.code);
    this.code = frame.code;
    this.retryable = !!frame.retryable;
    this.retryAfterMs = frame.retry_after_ms || 0;
  }
}

export class Connection {
  // `random` (Math.random's contract) draws every jitter: the reconnect's
  // backoff, the wait after a close or an answer that named one.
  constructor({ url, onOpen, onFrame, onState, onRevoked, onServerClose, random = Math.random }) {
    this.url = url;
    this.random = random;
    this.onOpen = onOpen;
    this.onFrame = onFrame;
    this.onState = onState;
    this.onRevoked = onRevoked;
    this.onServerClose = onServerClose; // (close code) => void, before the reconnect is planned
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.readsInFlight = 0; // counted reads sent and not answered (request)
    this.readsWaiting = []; // counted reads waiting for one of those to be answered: their start functions
    this.state = 'connecting';
    this.attempt = 0;
    this.retryTimer = null;
    this.heartbeatTimer = null;
    this.livenessTimer = null;
    this.heartbeatIntervalMs = kDefaultHeartbeatIntervalMs;
    this.heartbeatTimeoutMs = kDefaultHeartbeatTimeoutMs;
    this.stopped = false;
    this.onPing = null; // (result) => void, set by the app (head check)
    window.addEventListener('online', () => this.connectSoon(0));
    window.addEventListener('offline', () => this.dropForOffline());
  }

  setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.onState?.(s);
  }

  start() {
    this.stopped = false;
    this.connectSoon(0);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.teardown();
    this.setState('closed');
  }

  connectSoon(delayMs) {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    if (!navigator.onLine) {
      this.setState('offline');
      return; // the 'online' event calls us again
    }
    if (this.ws) return;
    this.setState('connecting');
    this.retryTimer = setTimeout(() => this.connect(), delayMs);
  }

  backoffDelay(minMs = 0) {
    const cap = backoffCapMs(this.attempt);
    this.attempt += 1;
    return minMs + this.random() * cap;
  }

  connect() {
    if (this.stopped || this.ws) return;
    if (!navigator.onLine) return this.setState('offline');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      return this.connectSoon(this.backoffDelay());
    }
    this.ws = ws;
    ws.onopen = () => {
      this.setState('open');
      this.resetLiveness();
      this.scheduleHeartbeat();
      Promise.resolve(this.onOpen?.()).then(
        () => {
          this.attempt = 0;
        },
        (e) => {
          // A socket the server is closing: its close event decides (the
          // close code and its retry_after_ms).
          if (this.ws !== ws || ws.readyState !== WebSocket.OPEN) return;
          // The app's set-up failed on an open socket (auth refused, a
          // request timed out): start again, after the server's wait when
          // its answer named one (auth's user_disabled, unavailable), else
          // with backoff.
          this.teardown();
          const wait = e instanceof ProtocolError ? e.retryAfterMs : 0;
          this.connectSoon(wait > 0 ? retryAfterDelayMs(wait, this.random) : this.backoffDelay());
        },
      );
    };
    ws.onmessage = (ev) => {
      this.resetLiveness();
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (this.settle(frame)) return;
      this.onFrame?.(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.teardown();
      this.onServerClose?.(ev.code);
      if (ev.code === kCloseRevoked) {
        this.stopped = true;
        this.setState('closed');
        this.onRevoked?.();
        return;
      }
      let retryAfter = 0;
      // 4005: the account is disabled, the token kept: try again later (auth
      // answers user_disabled until it is enabled; nothing local is dropped).
      if (ev.code === kCloseShutdown || ev.code === kCloseTryLater || ev.code === kCloseAccountDisabled) {
        try {
          retryAfter = JSON.parse(ev.reason).retry_after_ms || 0;
        } catch {
          retryAfter = 0;
        }
        return this.connectSoon(retryAfterDelayMs(retryAfter, this.random));
      }
      this.connectSoon(this.backoffDelay());
    };
    ws.onerror = () => {}; // onclose follows and decides
  }

  dropForOffline() {
    if (this.stopped) return;
    this.teardown();
    this.setState('offline');
  }

  teardown() {
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.livenessTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close();
      } catch {
        /* already closed */
      }
    }
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new ProtocolError({ code: 'disconnected', message: 'disconnected', retryable: true }));
    }
    this.pending.clear();
  }

  setHeartbeat(intervalMs, timeoutMs) {
    if (intervalMs > 0) this.heartbeatIntervalMs = intervalMs;
    if (timeoutMs > 0) this.heartbeatTimeoutMs = timeoutMs;
    this.scheduleHeartbeat();
    this.resetLiveness();
  }

  scheduleHeartbeat() {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => {
      this.request('ping', {}).then(
        (r) => this.onPing?.(r),
        () => {},
      );
    }, this.heartbeatIntervalMs);
  }

  // Nothing heard for the heartbeat timeout: the connection is dead even if
  // the socket has not noticed. Drop it and reconnect.
  resetLiveness() {
    clearTimeout(this.livenessTimer);
    const ws = this.ws;
    this.livenessTimer = setTimeout(() => {
      if (this.ws !== ws) return;
      this.teardown();
      this.connectSoon(this.backoffDelay());
    }, this.heartbeatTimeoutMs);
  }

  get isOpen() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  // An answer to a request (a response, or an error naming its id) settles
  // that request's promise; returns whether `frame` was one.
  settle(frame) {
    if (frame.type !== 'response' && !(frame.type === 'error' && frame.id !== null && frame.id !== undefined)) {
      return false;
    }
    const p = this.pending.get(frame.id);
    if (!p) return true;
    this.pending.delete(frame.id);
    clearTimeout(p.timer);
    if (frame.type === 'response') p.resolve(frame.result);
    else p.reject(new ProtocolError(frame));
    return true;
  }

  // Returns the result object, or rejects with a ProtocolError. Reads the
  // server counts (kCountedReads) are sent at most kMaxReadsInFlight at a
  // time; later ones wait here for an earlier one's answer, so that a burst
  // (many conversations paged at once) is never refused as a flood.
  request(type, fields = {}) {
    if (!kCountedReads.has(type)) return this.send(type, fields);
    return this.countedRead(type, fields);
  }

  // One counted read: waits for a slot, then sends. Refused as a flood all
  // the same (the server still counts a read this side gave up on at its
  // timeout), it is sent again after the server's wait plus its jitter
  // (retryAfterDelayMs: the reads refused together do not come back
  // together), a few times.
  async countedRead(type, fields) {
    for (let attempt = 0; ; attempt += 1) {
      while (this.readsInFlight >= kMaxReadsInFlight) await new Promise((wake) => this.readsWaiting.push(wake));
      this.readsInFlight += 1;
      let wait;
      try {
        return await this.send(type, fields);
      } catch (e) {
        if (e.code !== 'rate_limited' || attempt >= kMaxReadRetries) throw e;
        wait = e.retryAfterMs;
      } finally {
        this.readsInFlight -= 1;
        this.readsWaiting.shift()?.();
      }
      await new Promise((r) => setTimeout(r, retryAfterDelayMs(wait, this.random)));
    }
  }

  // Sends one request now; its answer settles the promise (see request).
  send(type, fields) {
    return new Promise((resolve, reject) => {
      if (!this.isOpen) {
        reject(new ProtocolError({ code: 'disconnected', message: 'not connected', retryable: true }));
        return;
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ProtocolError({ code: 'timeout', message: 'no answer', retryable: true }));
      }, kRequestTimeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ v: 1, id, type, ...fields }));
    });
  }
}
