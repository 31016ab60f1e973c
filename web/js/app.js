// The Parley web client: session, sync, outbox and screens (docs/web.md).
//
// Data flow: every change comes from the user stream (live `event` frames or
// `sync` pages) and is applied to `state` (state.js), which is persisted in
// IndexedDB with `applied`; screens re-render from `state`. Messages the user
// writes go to the IndexedDB outbox first and are sent from there, one at a
// time and in order, whenever the connection is authenticated; the server
// deduplicates on their client ids, so a retry after a lost answer is safe.

import { Connection, ProtocolError, RetryTimer, kCloseAccountDisabled } from './connection.js';
import { kv, outbox, clearAll } from './db.js';
import {
  emptyState, applyEntry, applyEvent, applyChange, addMessages, addWithheld, peerOf, displayName, tickOf,
  conversationsByActivity, myWatermark, recountUnread, sortByUsername, advanceApplied, expireMessages,
  applySummary, applyFill, fillReached, missingNewest, kMaxCachedMessages, setTimer, clearDraftForSend,
  restoreRefusedDraft, draftSaved,
} from './state.js';
import { h, syncList, setText, visuallyHidden } from './dom.js';

const kSyncPageLimit = 500;
const kSnapshotMessages = 20;
const kHistoryPageLimit = 50;
const kAckDelayMs = 1_000;
const kSaveDelayMs = 150;
const kExpiryCheckMs = 1000; // how often cached messages are checked against their expires_at
const kTypingRefreshMs = 3_000;
const kTypingIdleMs = 5_000;
const kDraftSaveDelayMs = 500; // the composer's draft is saved (set_draft) this long after the last keystroke
const kMaxPresenceSubscription = 256;
const kOutboxMaxAgeMs = 30 * 24 * 3600 * 1000; // as the SDK: then the message is marked failed
const kSearchLimit = 20;
const kLoginConnectTimeoutMs = 10_000;
// Field limits of protocol.md (bytes there; the server has the last word).
const kMaxBodyLength = 16_384;
const kMaxDisplayNameLength = 64;
const kMaxAboutLength = 140;
const kMaxSearchLength = 64;
const kUsernameLength = [3, 32];
const kMinPasswordLength = 8;
const kLoadOlderThresholdPx = 40; // this close to the top of a chat, older messages load
const kStickToBottomPx = 60; // this close to the bottom, new messages scroll into view
const kMaxProfileLookupsPerConnection = 16; // search_users is rate limited (protocol.md)
// Selective sync (docs/protocol.md "select_sync"): every connection syncs in
// full only the user's most recent conversations and the ones the user
// opened; the others arrive as summaries until opened.
const kSyncRecentConversations = 20;
const kMaxSyncSelection = 256; // protocol limit: conversations in one selection
const kFillPageLimit = 200; // history pages of a summarised conversation once opened (the protocol's maximum)

const app = {
  session: null, // {token, user_id, username, device_id}
  state: null,
  conn: null,
  authed: false,
  accountDisabled: false, // closed with 4005 or auth answered user_disabled, until an auth succeeds
  syncing: false,
  syncAgain: false,
  liveQueue: [],
  covered: new Set(), // user seqs folded into a coalesced receipt (also_covers)
  outbox: [], // in-memory copy of the IndexedDB outbox
  flushing: false,
  outboxRetry: new RetryTimer(() => flushOutbox()),
  presence: {}, // user_id -> {online, last_seen}
  presenceSupported: true,
  presenceKey: '',
  typing: {}, // conversation_id -> {until}
  typingSentAt: 0,
  typingConv: 0,
  typingStopTimer: null,
  draftTimers: {}, // conversation_id -> timeout of the debounced set_draft
  draftInFlight: {}, // conversation_id -> true while its set_draft is unanswered
  draftRetries: {}, // conversation_id -> RetryTimer of its set_draft
  reportedDelivered: {}, // conversation_id -> seq this device reported
  reportedRead: {},
  route: null,
  screen: null, // {update()} of the current screen
  renderQueued: false,
  saveTimer: null,
  lastSaveAt: 0,
  ackTimer: null,
  ackedApplied: 0,
  historyLoading: false,
  wasOnline: false, // authenticated at least once since the page loaded
  profileLookups: new Set(), // user ids looked up on this connection
  limits: null, // the server's limits from the auth result (edit_window_ms, delete_window_ms, ...)
  selection: null, // selective sync: this connection's selected conversation ids (null: it syncs everything)
  selectHead: 0, // the head of the select_sync answer that made the selection
  filling: new Set(), // conversation ids whose history is being paged after summaries
};

// How many recent conversations a connection selects. The browser tests set
// window.parleySyncRecentForTest to a small number before the page loads.
function syncRecent() {
  const n = window.parleySyncRecentForTest;
  return Number.isInteger(n) ? n : kSyncRecentConversations;
}

// ---------------------------------------------------------------- start-up

async function main() {
  registerServiceWorker();
  window.addEventListener('hashchange', () => route());
  document.addEventListener('visibilitychange', () => {
    sendAppState();
    scheduleRender();
  });
  app.session = (await kv.get('session')) || null;
  if (app.session) {
    app.state = (await kv.get('state')) || emptyState(meOf(app.session));
    app.state.pendingDrafts ||= {}; // a state stored before drafts
    app.state.opened ||= []; // a state stored before selective sync
    app.outbox = (await outbox.all()).sort((a, b) => a.order - b.order);
    app.limits = (await kv.get('limits')) || null; // the last server's, until auth tells again
    startConnection();
  }
  // Retention: expired messages leave this device at their expires_at.
  setInterval(expireDue, kExpiryCheckMs);
  route();
}

// The timer choices offered (seconds; docs/protocol.md "set_disappearing").
const kDisappearingChoices = [[0, 'Off'], [3600, '1 hour'], [86400, '1 day'], [604800, '7 days'], [7776000, '90 days']];

async function setDisappearing(convId, seconds, note) {
  try {
    const before = app.state.applied;
    await app.conn.request('set_disappearing', { conversation_id: convId, seconds });
    const conv = app.state.convs[convId];
    if (conv) setTimer(conv, seconds, before); // the `disappearing` event says the same, or newer
    statusLine(note, seconds ? 'New messages will disappear.' : 'New messages will stay.');
    scheduleSave();
  } catch (e) {
    statusLine(note, `Could not change the timer: ${e.message || e}`, 'error');
  }
  scheduleRender();
}

// What a tombstone shows: an expiry reads as one.
function deletedText(m) {
  return m.reason === 'expired' ? 'This message expired' : 'This message was deleted';
}

// Drops the text of cached messages whose expires_at has passed
// (docs/protocol.md, "Retention"), then saves (the text leaves IndexedDB) and
// redraws.
function expireDue() {
  if (!app.state) return;
  if (expireMessages(app.state, Date.now()).length) {
    scheduleSave();
    scheduleRender();
  }
}

function meOf(s) {
  return { user_id: s.user_id, username: s.username, device_id: s.device_id };
}

function registerServiceWorker() {
  if (!('serviceWorker' in navigator)) return;
  navigator.serviceWorker.register('/sw.js').then(
    () => navigator.serviceWorker.ready.then(() => (document.documentElement.dataset.swReady = '1')),
    () => {},
  );
}

function wsUrl() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}/v1/ws`;
}

function startConnection() {
  app.conn = new Connection({
    url: wsUrl(),
    onOpen: onOpen,
    onFrame: onFrame,
    onState: (s) => {
      if (s !== 'open') {
        app.authed = false;
        app.typing = {}; // no stop will come over a dead connection
        scheduleRender();
      }
      showConnState();
    },
    onRevoked: () => signedOut('This device was signed out.'),
    onServerClose: (code) => {
      if (code === kCloseAccountDisabled) app.accountDisabled = true;
    },
  });
  app.conn.onPing = (r) => onHead(r.head);
  showConnState();
  app.conn.start();
}

async function onOpen() {
  // Before auth, so that a tab opened in the background never shows online.
  sendAppState();
  let r;
  try {
    r = await app.conn.request('auth', { token: app.session.token });
  } catch (e) {
    if (e instanceof ProtocolError && e.code === 'invalid_token') return signedOut('Your session ended. Please log in again.');
    if (e instanceof ProtocolError && e.code === 'user_disabled') {
      app.accountDisabled = true; // the connection tries again after the answer's retry_after_ms
      showConnState();
    }
    throw e;
  }
  app.accountDisabled = false;
  app.conn.setHeartbeat(r.heartbeat_interval_ms, r.heartbeat_timeout_ms);
  if (r.limits) {
    app.limits = r.limits;
    kv.set('limits', r.limits);
  }
  await selectSync();
  if (app.state.applied === null) await takeSnapshot();
  else await requestSync();
  app.authed = true;
  app.wasOnline = true;
  showConnState();
  app.presenceKey = ''; // a new connection has no subscription yet
  app.profileLookups = new Set();
  updatePresenceSubscription();
  flushOutbox();
  flushDrafts();
  reportReceipts();
  lookUpProfiles();
  fillSelected();
  scheduleRender();
}

// ---------------------------------------------------------- selective sync
// (docs/protocol.md "select_sync" and "Sync algorithm"; state.js applies
// summaries.) After auth, before the first sync page, each connection
// selects the kSyncRecentConversations most recent conversations and the
// ones in state.opened. Opening a chat adds it (select_sync `add`) and, when
// summaries stood for some of its messages, pages its history until the
// cache holds every unread message (fill); the conversations a connection
// selects that are still summarised are filled the same way, so a selected
// conversation's count always comes from complete messages.

async function selectSync() {
  app.selection = null;
  const recent = syncRecent();
  if (recent <= 0) return;
  const opened = app.state.opened.slice(-(kMaxSyncSelection - recent));
  let r;
  try {
    r = await app.conn.request('select_sync', opened.length ? { recent, conversations: opened } : { recent });
  } catch (e) {
    if (!(e instanceof ProtocolError) || e.code === 'disconnected' || e.code === 'timeout') throw e;
    if (e.code !== 'not_member' || !opened.length) return; // a server without selective sync: everything in full
    // One we opened is ours no more (or never reached the server): select
    // the recent ones now, open the others again when the user does.
    app.state.opened = [];
    r = await app.conn.request('select_sync', { recent }).catch(() => null);
    if (!r) return;
  }
  noteSelection(r, null);
}

// Records a select_sync answer; `added`: the conversation an `add` selected
// (null: a new selection, every selected one starts at its head).
function noteSelection(r, added) {
  app.selection = r.selective ? new Set(r.conversations) : null;
  app.selectHead = r.head || 0;
  for (const id of added === null ? r.conversations || [] : [added]) {
    const conv = app.state.convs[id];
    if (conv) conv.selectedHead = Math.max(conv.selectedHead || 0, r.head || 0);
  }
}

function rememberOpened(convId) {
  const s = app.state;
  s.opened = [...s.opened.filter((x) => x !== convId), convId].slice(-kMaxSyncSelection);
  scheduleSave();
}

// The user opened chat `convId`: select it on this connection and every
// later one, and page what summaries stood for.
async function openSelected(convId) {
  const conv = app.state?.convs[convId];
  if (!conv) return;
  if (!app.state.opened.includes(convId)) rememberOpened(convId);
  if (!app.authed) return; // onOpen selects it and fills it
  if (app.selection && !app.selection.has(convId)) {
    try {
      noteSelection(await app.conn.request('select_sync', { add: [convId] }), convId);
    } catch {
      return; // offline: the next connection selects it
    }
  }
  if (conv.summarised) await fill(convId);
}

// A conversation created after the selection was made is the most recent
// of all: while the selection holds fewer than the recent ones a connection
// selects, it is added (so a small account syncs everything in full).
async function selectNew(convId) {
  if (!app.authed || !app.selection || app.selection.has(convId) || app.selection.size >= syncRecent()) return;
  app.selection.add(convId); // counted at once: a burst of new ones adds no more than that
  try {
    noteSelection(await app.conn.request('select_sync', { add: [convId] }), convId);
  } catch {
    app.selection?.delete(convId);
    return;
  }
  if (app.state.convs[convId]?.summarised) await fill(convId);
}

// A summary for a selected conversation came after its selection's answer
// (made before it, or while the answer was on its way): its messages are
// paged now, since nothing else would (openSelected and selectNew page only
// what was summarised when they ran).
function fillSummarisedSelected(events) {
  for (const e of events) {
    const conv = e.kind === 'summary' && app.state.convs[e.conversation_id];
    if (conv && conv.summarised && app.selection?.has(conv.id)) fill(conv.id);
  }
}

// Fills the selected conversations still summarised, and the open chat.
async function fillSelected() {
  if (app.route?.name === 'chat') await openSelected(app.route.id);
  for (const conv of Object.values(app.state?.convs || {})) {
    if (!app.authed) return;
    if (conv.summarised && (!app.selection || app.selection.has(conv.id))) await fill(conv.id);
  }
}

// Pages the history of a summarised conversation from the newest until the
// pages join the cached messages, reach our read watermark or the first
// message (at most kMaxCachedMessages), then folds them in (applyFill).
async function fill(convId) {
  if (app.filling.has(convId) || !app.authed) return;
  app.filling.add(convId);
  const state = app.state;
  try {
    const messages = [];
    let before = 0;
    let hasMore = true;
    while (messages.length < kMaxCachedMessages) {
      const r = await app.conn.request('history', { conversation_id: convId, before, limit: kFillPageLimit });
      if (app.state !== state) return; // signed out, or a snapshot replaced the copy: its pages are newer
      addWithheld(state.convs[convId], r.withheld);
      messages.push(...r.messages);
      hasMore = r.has_more;
      if (!r.messages.length || !hasMore) break;
      before = r.messages[0].seq;
      if (fillReached(state, state.convs[convId], before)) break;
    }
    applyFill(state, state.convs[convId], messages, hasMore);
    scheduleSave();
    reportReceipts();
    scheduleRender();
  } catch {
    /* offline: the next connection fills it */
  } finally {
    app.filling.delete(convId);
  }
}

// The protocol has no "get profile" request: profiles arrive with contacts,
// search results and `profile` events (only for changes made while we share
// a conversation). A conversation peer whose profile we have never seen is
// looked up once per connection with an exact-username search.
async function lookUpProfiles() {
  const missing = conversationsByActivity(app.state)
    .map((c) => peerOf(app.state, c))
    .filter((p) => p.user_id && !app.state.profiles[p.user_id] && !app.profileLookups.has(p.user_id))
    .slice(0, kMaxProfileLookupsPerConnection - app.profileLookups.size);
  for (const p of missing) {
    app.profileLookups.add(p.user_id);
    try {
      const r = await app.conn.request('search_users', { query: p.username, limit: 1 });
      const u = r.users.find((x) => x.user_id === p.user_id);
      if (u) app.state.profiles[u.user_id] = u;
    } catch {
      break; // offline or rate limited: the next connection tries again
    }
  }
  if (missing.length) {
    scheduleSave();
    scheduleRender();
  }
}

async function takeSnapshot() {
  const me = app.state.me;
  const privacy = app.state.privacy;
  const snap = await app.conn.request('snapshot', { messages: kSnapshotMessages });
  const fresh = emptyState(me);
  fresh.privacy = privacy;
  fresh.pendingDrafts = app.state.pendingDrafts || {}; // typed here, not saved yet: they still win
  fresh.opened = app.state.opened || []; // the user's choice, not stream-derived
  for (const entry of snap.conversations) applyEntry(fresh, entry);
  const [contacts, blocked] = await Promise.all([
    app.conn.request('list_contacts'),
    app.conn.request('list_blocked'),
  ]);
  for (const c of contacts.contacts) fresh.profiles[c.user.user_id] = c.user;
  fresh.contacts = contacts.contacts.map((c) => c.user.user_id);
  for (const u of blocked.users) fresh.profiles[u.user_id] = u;
  fresh.blocked = blocked.users.map((u) => u.user_id);
  fresh.applied = snap.head;
  // Selected before the snapshot: a summary made before then changes no count.
  for (const id of app.selection || []) if (fresh.convs[id]) fresh.convs[id].selectedHead = app.selectHead;
  app.state = fresh;
  app.covered = new Set();
  await saveNow();
  scheduleAck();
  // Events that arrived live meanwhile: those after the head still apply.
  drainLive();
}

// ------------------------------------------------------------------ stream

function onFrame(f) {
  if (f.type === 'event') return onLiveEvent(f.event);
  if (f.type === 'head') return onHead(f.head);
  if (f.type === 'typing') return onTyping(f);
  if (f.type === 'presence') {
    app.presence[f.user_id] = { online: !!f.online, last_seen: f.last_seen };
    return scheduleRender();
  }
}

// The user's head, from a ping's answer or a `head` notice (the server was
// cut off from its other nodes, and live events may have been lost): sync
// when behind it.
function onHead(head) {
  if (typeof head === 'number' && app.state && app.state.applied !== null && head > app.state.applied) requestSync();
}

function onLiveEvent(e) {
  if (!app.state || app.state.applied === null || app.syncing) {
    app.liveQueue.push(e);
    return;
  }
  if (e.user_seq <= app.state.applied) return;
  if (e.user_seq === app.state.applied + 1) {
    applyAndPersist([e]);
    return;
  }
  app.liveQueue.push(e); // a gap: sync fills it, then the kept ones apply
  requestSync();
}

function drainLive() {
  app.liveQueue.sort((a, b) => a.user_seq - b.user_seq);
  const rest = [];
  for (const e of app.liveQueue) {
    if (e.user_seq <= app.state.applied) continue;
    if (e.user_seq === app.state.applied + 1) applyAndPersist([e]);
    else rest.push(e);
  }
  app.liveQueue = rest;
  if (rest.length) requestSync();
}

// Marks `e` applied. A coalesced receipt lists, in `also_covers`, later user
// seqs folded into it that will not arrive live: they count as applied when
// their turn comes (protocol.md, "Sync algorithm").
function markApplied(e) {
  advanceApplied(app.state, app.covered, e);
}

function applyAndPersist(events) {
  if (events.some((e) => e.kind === 'conversation')) setTimeout(lookUpProfiles, 0);
  for (const e of events) if (e.kind === 'conversation') selectNew(e.conversation.conversation_id);
  for (const e of events) {
    // A live summary is as new as it comes: its conversation moves up.
    const conv = e.kind === 'summary' ? applySummary(app.state, e, Date.now()) : applyEvent(app.state, e);
    if (conv && e.kind === 'message') onMessageApplied(conv, e.message);
    markApplied(e);
  }
  fillSummarisedSelected(events);
  scheduleSave();
  scheduleAck();
  reportReceipts();
  scheduleRender();
}

function onMessageApplied(conv, m) {
  // Our own message from this or another device: it left the outbox.
  if (m.sender_id === app.state.me.user_id) {
    const entry = app.outbox.find((o) => o.client_id === m.client_id && o.conversation_id === m.conversation_id);
    if (entry) removeFromOutbox(entry);
  } else if (app.typing[conv.id]) {
    delete app.typing[conv.id]; // a message ends the other side's typing
  }
}

async function requestSync() {
  if (app.syncing) {
    app.syncAgain = true;
    return;
  }
  if (!app.conn || !app.conn.isOpen || !app.state || app.state.applied === null) return;
  app.syncing = true;
  try {
    do {
      app.syncAgain = false;
      for (;;) {
        let page;
        try {
          page = await app.conn.request('sync', { after: app.state.applied, limit: kSyncPageLimit });
        } catch (e) {
          if (e instanceof ProtocolError && (e.code === 'cursor_ahead' || e.code === 'cursor_too_old')) {
            app.syncing = false;
            await takeSnapshot();
            return;
          }
          throw e;
        }
        for (const e of page.events) {
          if (e.user_seq <= app.state.applied) continue; // also skipped through also_covers
          const conv = applyEvent(app.state, e);
          if (conv && e.kind === 'message') onMessageApplied(conv, e.message);
          markApplied(e);
        }
        fillSummarisedSelected(page.events);
        // A page covers (after, next] exactly, summaries included.
        if (page.next > app.state.applied) markApplied({ user_seq: page.next });
        if (!page.has_more) break;
      }
    } while (app.syncAgain);
  } finally {
    app.syncing = false;
  }
  await saveNow();
  scheduleAck();
  reportReceipts();
  scheduleRender();
  drainLive();
}

// At most one save per kSaveDelayMs, the first of a burst at once (a
// throttle, not a debounce: a debounce kept postponing the save while events
// kept coming, and a reload soon after a change lost it).
function scheduleSave() {
  if (app.saveTimer) return; // a save is already due; it will take this change too
  const wait = Math.max(0, app.lastSaveAt + kSaveDelayMs - Date.now());
  app.saveTimer = setTimeout(() => saveNow(), wait);
}

async function saveNow() {
  clearTimeout(app.saveTimer);
  app.saveTimer = null;
  app.lastSaveAt = Date.now();
  if (app.session && app.state) await kv.set('state', app.state);
}

function scheduleAck() {
  clearTimeout(app.ackTimer);
  app.ackTimer = setTimeout(async () => {
    const applied = app.state?.applied;
    if (!app.authed || applied === null || applied <= app.ackedApplied) return;
    await saveNow(); // ack only what is stored
    try {
      await app.conn.request('ack', { user_seq: applied });
      app.ackedApplied = applied;
    } catch {
      /* next ack covers it */
    }
  }, kAckDelayMs);
}

// Delivered as soon as stored; read when the chat is on screen and visible.
async function reportReceipts() {
  if (!app.authed || !app.state) return;
  const items = [];
  const openId = app.route?.name === 'chat' ? app.route.id : 0;
  const visible = document.visibilityState === 'visible';
  const me = app.state.me.user_id;
  for (const conv of Object.values(app.state.convs)) {
    const last = conv.messages.length ? conv.messages[conv.messages.length - 1].seq : 0;
    const lastPeer = [...conv.messages].reverse().find((m) => m.sender_id !== me);
    if (!lastPeer) continue;
    const item = { conversation_id: conv.id };
    if (lastPeer.seq > (app.reportedDelivered[conv.id] || 0) && lastPeer.seq > myWatermark(app.state, conv).delivered)
      item.delivered = lastPeer.seq;
    if (conv.id === openId && visible && last > (app.reportedRead[conv.id] || 0) &&
        (conv.unread > 0 || lastPeer.seq > myWatermark(app.state, conv).read))
      item.read = last;
    if (item.delivered || item.read) items.push(item);
  }
  if (!items.length) return;
  for (const it of items) {
    if (it.delivered) app.reportedDelivered[it.conversation_id] = it.delivered;
    if (it.read) {
      app.reportedRead[it.conversation_id] = it.read;
      app.reportedDelivered[it.conversation_id] = Math.max(app.reportedDelivered[it.conversation_id] || 0, it.read);
    }
  }
  try {
    await saveNow(); // "delivered" means stored
    await app.conn.request('receipt', { items });
  } catch {
    for (const it of items) {
      delete app.reportedDelivered[it.conversation_id];
      delete app.reportedRead[it.conversation_id];
    }
  }
}

// ------------------------------------------------------------------ outbox

async function compose(conversationId, body) {
  const entry = await outbox.add({
    conversation_id: conversationId,
    client_id: crypto.randomUUID(),
    body,
    created_at: Date.now(),
    failed: false,
  });
  app.outbox.push(entry);
  const conv = app.state.convs[conversationId];
  if (conv) conv.activity = Math.max(conv.activity, entry.created_at);
  scheduleRender();
  // The conversation the entry belongs to is stored with it, now: a reload
  // right after an offline send (before the debounced save) must still
  // find the chat its pending message shows in.
  await saveNow();
  flushOutbox();
}

async function removeFromOutbox(entry) {
  app.outbox = app.outbox.filter((o) => o.order !== entry.order);
  await outbox.remove(entry.order);
}

async function flushOutbox() {
  // A wait the server asked for (or a backoff) is pending: its timer flushes;
  // a compose or a reconnect meanwhile would only be refused again.
  if (app.flushing || app.outboxRetry.pending) return;
  app.flushing = true;
  try {
    for (;;) {
      const entry = app.outbox.find((o) => !o.failed);
      if (!entry || !app.authed) return;
      // A send that went out and got no answer (`attempted`, kept in
      // IndexedDB across reloads) may have been stored: the answer to the
      // next attempt decides, not the age.
      if (!entry.attempted && Date.now() - entry.created_at > kOutboxMaxAgeMs) {
        entry.failed = true;
        entry.error = 'Not sent: too old';
        await outbox.put(entry);
        settleDraft(entry, false);
        scheduleRender();
        continue;
      }
      // No earlier send of it was left unanswered: a refusal of this one
      // then says the server does not have it.
      const firstAttempt = !entry.attempted;
      if (firstAttempt) {
        entry.attempted = true;
        await outbox.put(entry);
      }
      try {
        const r = await app.conn.request('send', {
          conversation_id: entry.conversation_id, client_id: entry.client_id, body: entry.body,
        });
        app.outboxRetry.succeeded();
        const conv = app.state.convs[r.conversation_id];
        if (conv) {
          addMessages(conv, [{
            seq: r.seq, sender_id: app.state.me.user_id, client_id: r.client_id, body: entry.body, ts: r.ts,
            expires_at: r.expires_at,
          }]);
          conv.activity = Math.max(conv.activity, r.ts);
          recountUnread(app.state, conv);
        }
        await removeFromOutbox(entry);
        settleDraft(entry, true);
        scheduleSave();
        scheduleRender();
      } catch (e) {
        // Its own message event may have taken it out of the outbox while
        // the request was out (an earlier attempt was stored): then there is
        // nothing to record, and writing it back would bring it back.
        const stillQueued = app.outbox.includes(entry);
        if (e.retryable) {
          // A reconnect flushes again; anything else (a rate limit, a busy
          // server, an answer that never came on a socket still up): later,
          // backing off. A refusal (before the server looks for the client
          // id) says only that this attempt is not stored.
          if (firstAttempt && stillQueued && e.code !== 'disconnected' && e.code !== 'timeout') {
            entry.attempted = false;
            await outbox.put(entry);
          }
          if (e.code !== 'disconnected') app.outboxRetry.failed(e.retryAfterMs);
          return;
        }
        if (!stillQueued) continue;
        entry.failed = true;
        entry.attempted = false;
        entry.error = e.code === 'blocked' ? 'Not sent: you block this user' : `Not sent: ${e.message}`;
        await outbox.put(entry);
        settleDraft(entry, false);
        scheduleRender();
      }
    }
  } finally {
    app.flushing = false;
  }
}

// ------------------------------------------------------------------ drafts
// The composer's text is the conversation's draft (docs/protocol.md,
// set_draft): kept in state.pendingDrafts at each keystroke (persisted with
// the state, so it survives a reload offline) and saved kDraftSaveDelayMs
// after the last one, when leaving the chat and after reconnecting; one
// set_draft in flight per conversation, the newest text sent last. Until it
// is saved the local text wins over `draft` events from other devices.

function draftOf(conv) {
  const p = app.state.pendingDrafts[conv.id];
  return p ? p.text : conv.draft || '';
}

function draftInput(convId, text) {
  app.state.pendingDrafts[convId] = { text, at: Date.now() };
  scheduleSave();
  clearTimeout(app.draftTimers[convId]);
  app.draftTimers[convId] = setTimeout(() => saveDraft(convId), kDraftSaveDelayMs);
}

// Sending clears the draft (the server clears it when it stores the
// message and says so with a `draft` event): drop what was not saved.
function dropDraft(convId) {
  clearTimeout(app.draftTimers[convId]);
  delete app.draftTimers[convId];
  delete app.state.pendingDrafts[convId];
  const conv = app.state.convs[convId];
  if (conv) clearDraftForSend(conv);
  scheduleSave();
}

// An outbox entry is settled: stored, or refused for good. A refused one
// never cleared the server's draft, which comes back on screen
// (restoreRefusedDraft; docs/web.md "Drafts").
function settleDraft(entry, stored) {
  const conv = app.state?.convs[entry.conversation_id];
  if (!conv) return;
  const stillQueued = app.outbox.some((o) => !o.failed && o !== entry && o.conversation_id === entry.conversation_id);
  if (restoreRefusedDraft(conv, { stored, stillQueued })) scheduleRender();
  scheduleSave();
}

async function saveDraft(convId) {
  clearTimeout(app.draftTimers[convId]);
  delete app.draftTimers[convId];
  const p = app.state?.pendingDrafts[convId];
  if (!p || !app.authed || app.draftInFlight[convId]) return;
  app.draftInFlight[convId] = true;
  let again = false;
  try {
    const result = await app.conn.request('set_draft', { conversation_id: Number(convId), text: p.text });
    if (!app.state) return; // signed out meanwhile
    app.draftRetries[convId]?.succeeded();
    if (app.state.pendingDrafts[convId]?.text === p.text) {
      delete app.state.pendingDrafts[convId];
      const conv = app.state.convs[convId];
      if (conv) draftSaved(conv, p.text, result, app.state.applied);
    }
    scheduleSave();
    again = !!app.state.pendingDrafts[convId];
  } catch (e) {
    if (!app.state) return;
    if (!e.retryable) {
      // Refused for good (not_member, body_too_large): keep the text in the
      // composer, stop saving it.
      if (app.state.pendingDrafts[convId]?.text === p.text) delete app.state.pendingDrafts[convId];
      scheduleSave();
    } else if (e.code !== 'disconnected') {
      (app.draftRetries[convId] ||= new RetryTimer(() => saveDraft(convId))).failed(e.retryAfterMs);
    } // else: reconnecting saves it (flushDrafts)
  } finally {
    delete app.draftInFlight[convId];
  }
  if (again && !app.draftTimers[convId]) saveDraft(convId); // typed on while it was in flight
}

function flushDrafts() {
  for (const id of Object.keys(app.state?.pendingDrafts || {})) saveDraft(id);
}

// -------------------------------------------------------- presence, typing

function sendAppState() {
  if (!app.conn?.isOpen || !app.presenceSupported) return;
  const state = document.visibilityState === 'visible' ? 'foreground' : 'background';
  app.conn.request('set_app_state', { state }).catch(presenceError);
}

function presenceError(e) {
  if (e instanceof ProtocolError && (e.code === 'unknown_type' || e.code === 'bad_request')) {
    app.presenceSupported = false; // a server without presence
    scheduleRender();
  }
}

// Subscribes to the users on screen: conversation peers, the open chat's
// peer and the contacts.
function updatePresenceSubscription() {
  if (!app.authed || !app.presenceSupported || !app.state) return;
  const ids = new Set();
  const r = app.route || {};
  if (r.name === 'chat' && app.state.convs[r.id]) ids.add(peerOf(app.state, app.state.convs[r.id]).user_id);
  if (r.name === 'chats' || r.name === 'chat')
    for (const c of conversationsByActivity(app.state)) ids.add(peerOf(app.state, c).user_id);
  if (r.name === 'contacts') for (const id of app.state.contacts) ids.add(id);
  ids.delete(0);
  const list = [...ids].slice(0, kMaxPresenceSubscription).sort((a, b) => a - b);
  const key = list.join(',');
  if (key === app.presenceKey) return;
  app.presenceKey = key;
  app.conn.request('subscribe_presence', { user_ids: list }).then((res) => {
    for (const p of res.presence || []) app.presence[p.user_id] = { online: !!p.online, last_seen: p.last_seen };
    scheduleRender();
  }, (e) => {
    app.presenceKey = '';
    presenceError(e);
  });
}

function onTyping(f) {
  if (f.user_id === app.state?.me.user_id) return;
  if (f.state === 'start') {
    app.typing[f.conversation_id] = { until: Date.now() + (f.expires_in_ms || kTypingIdleMs) };
    setTimeout(scheduleRender, (f.expires_in_ms || kTypingIdleMs) + 50);
  } else delete app.typing[f.conversation_id];
  scheduleRender();
}

function isTyping(convId) {
  const t = app.typing[convId];
  return !!t && t.until > Date.now();
}

function typingInput(convId, empty) {
  if (!app.authed) return;
  clearTimeout(app.typingStopTimer);
  if (empty) return stopTyping();
  const now = Date.now();
  if (app.typingConv !== convId || now - app.typingSentAt > kTypingRefreshMs) {
    app.typingConv = convId;
    app.typingSentAt = now;
    app.conn.request('typing', { conversation_id: convId, state: 'start' }).catch(() => {});
  }
  app.typingStopTimer = setTimeout(stopTyping, kTypingIdleMs);
}

function stopTyping() {
  clearTimeout(app.typingStopTimer);
  if (!app.typingConv) return;
  const id = app.typingConv;
  app.typingConv = 0;
  app.typingSentAt = 0;
  if (app.authed) app.conn.request('typing', { conversation_id: id, state: 'stop' }).catch(() => {});
}

// --------------------------------------------------------------- sessions

async function withTemporaryConnection(fn) {
  // Login and register run on their own short-lived socket; the session's
  // connection starts after, with the token.
  const ws = new Connection({ url: wsUrl() });
  const opened = new Promise((resolve, reject) => {
    ws.onOpen = resolve;
    ws.onState = (s) => {
      if (s === 'offline') reject(new ProtocolError({ code: 'offline', message: 'You are offline.' }));
    };
  });
  ws.start();
  try {
    await Promise.race([opened, new Promise((_, rej) => setTimeout(
      () => rej(new ProtocolError({ code: 'timeout', message: 'The server cannot be reached.' })), kLoginConnectTimeoutMs))]);
    return await fn(ws);
  } finally {
    ws.stop();
  }
}

async function logIn(username, password, register) {
  const result = await withTemporaryConnection(async (c) => {
    if (register) await c.request('register', { username, password });
    return c.request('login', { username, password, device_name: deviceName(), platform: 'web' });
  });
  app.session = { token: result.token, user_id: result.user_id, username: result.username, device_id: result.device_id };
  await clearAll();
  await kv.set('session', app.session);
  app.state = emptyState(meOf(app.session));
  app.outbox = [];
  startConnection();
  location.hash = '#/chats';
}

function deviceName() {
  const ua = navigator.userAgent;
  const browser = /Firefox\//.test(ua) ? 'Firefox' : /Edg\//.test(ua) ? 'Edge' : /Chrom/.test(ua) ? 'Chromium' : /Safari\//.test(ua) ? 'Safari' : 'Browser';
  const os = /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS' : /Mac OS/.test(ua) ? 'macOS' : /Windows/.test(ua) ? 'Windows' : /Linux/.test(ua) ? 'Linux' : '';
  return `Web: ${browser}${os ? ` on ${os}` : ''}`;
}

async function logOut() {
  if (app.authed) {
    try {
      await app.conn.request('logout');
    } catch {
      /* the token is dropped locally either way */
    }
  }
  await signedOut('');
}

async function signedOut(message) {
  app.screen = null; // its updates read the state that is about to go
  app.conn?.stop();
  app.conn = null;
  app.authed = false;
  app.accountDisabled = false;
  app.session = null;
  app.state = null;
  app.outbox = [];
  app.outboxRetry.cancel();
  app.outboxRetry.succeeded();
  for (const r of Object.values(app.draftRetries)) r.cancel();
  app.draftRetries = {};
  app.presence = {};
  app.limits = null;
  app.reportedDelivered = {};
  app.reportedRead = {};
  await clearAll();
  app.loginMessage = message;
  if (location.hash !== '#/login') location.hash = '#/login';
  else route();
}

// ------------------------------------------------------------------ render

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, '').split('/');
  const name = parts[0] || (app.session ? 'chats' : 'login');
  return { name, id: Number(parts[1]) || 0 };
}

const screens = { login: loginScreen, chats: chatsScreen, chat: chatScreen, contacts: contactsScreen, devices: devicesScreen, profile: profileScreen };

function route() {
  let r = parseRoute();
  if (!app.session && r.name !== 'login') r = { name: 'login', id: 0 };
  if (app.session && (r.name === 'login' || !screens[r.name])) r = { name: 'chats', id: 0 };
  if (app.route?.name === 'chat' && (r.name !== 'chat' || r.id !== app.route.id)) {
    stopTyping();
    if (app.state?.pendingDrafts[app.route.id]) saveDraft(app.route.id); // leaving: save the draft now
  }
  app.route = r;
  const target = `#/${r.name}${r.id ? `/${r.id}` : ''}`;
  if (location.hash !== target) history.replaceState(null, '', target);
  const main = document.getElementById('main');
  main.replaceChildren();
  document.getElementById('nav').hidden = !app.session;
  for (const a of document.querySelectorAll('#nav a')) {
    const active = a.getAttribute('href') === `#/${r.name}` || (r.name === 'chat' && a.getAttribute('href') === '#/chats');
    if (active) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  app.screen = screens[r.name](main, r);
  app.screen.update?.();
  if (r.name === 'chat') openSelected(r.id);
  showConnState();
  (app.screen.focus || main.querySelector('h1'))?.focus();
  updatePresenceSubscription();
  reportReceipts();
}

function scheduleRender() {
  if (app.renderQueued) return;
  app.renderQueued = true;
  requestAnimationFrame(() => {
    app.renderQueued = false;
    if (!app.state) return; // signed out: the login screen needs no updates
    app.screen?.update?.();
    updatePresenceSubscription();
    updateTitle();
  });
}

function updateTitle() {
  const unread = app.state ? Object.values(app.state.convs).reduce((n, c) => n + c.unread, 0) : 0;
  const title = unread ? `(${unread}) Parley` : 'Parley';
  if (document.title !== title) document.title = title;
}

function showConnState() {
  const el = document.getElementById('conn-status');
  let state = 'signed-out';
  let text = '';
  if (app.session && app.conn) {
    const s = app.conn.state;
    if (s === 'offline') {
      state = 'offline';
      text = 'Offline. Messages you write are kept and sent when you are back online.';
    } else if (app.accountDisabled) {
      state = 'disabled';
      text = 'Your account is disabled by the server\'s operator. Messages you write are kept and sent if it is enabled again.';
    } else if (app.authed) {
      state = 'online';
    } else {
      state = 'connecting';
      text = app.wasOnline ? 'Reconnecting…' : 'Connecting…';
    }
  }
  el.dataset.state = state;
  setText(el, text);
  el.hidden = !text;
}

function heading(text) {
  return h('h1', { tabindex: '-1' }, text);
}

function presenceText(userId, long) {
  if (!app.presenceSupported) return '';
  const p = app.presence[userId];
  if (!p) return '';
  if (p.online) return 'online';
  if (!p.last_seen) return long ? '' : 'offline';
  return `last seen ${formatWhen(p.last_seen)}`;
}

function formatWhen(ts) {
  const d = new Date(ts);
  const now = new Date();
  const time = d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  if (d.toDateString() === now.toDateString()) return `today at ${time}`;
  const y = new Date(now);
  y.setDate(now.getDate() - 1);
  if (d.toDateString() === y.toDateString()) return `yesterday at ${time}`;
  return `${d.toLocaleDateString(undefined, { day: 'numeric', month: 'short' })} at ${time}`;
}

function formatTime(ts) {
  const d = new Date(ts);
  if (d.toDateString() === new Date().toDateString()) return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  return d.toLocaleDateString(undefined, { day: 'numeric', month: 'short' });
}

function presenceDot(userId) {
  if (!app.presenceSupported) return '';
  const p = app.presence[userId];
  const online = !!p?.online;
  return h('span', { class: `dot ${online ? 'online' : 'away'}`, 'aria-hidden': 'true' });
}

function statusLine(el, text, kind = 'info') {
  el.className = `notice ${kind}`;
  setText(el, text);
}

// ---- login

function loginScreen(main) {
  const status = h('p', { role: 'alert', class: 'notice', id: 'login-error' }, app.loginMessage || '');
  app.loginMessage = '';
  const user = h('input', { id: 'username', name: 'username', autocomplete: 'username', required: true, minlength: kUsernameLength[0], maxlength: kUsernameLength[1], autocapitalize: 'none', spellcheck: 'false' });
  const pass = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true, minlength: kMinPasswordLength });
  let register = false;
  const busy = (on) => form.querySelectorAll('button').forEach((b) => (b.disabled = on));
  const form = h('form', { class: 'card', 'aria-labelledby': 'login-title', onsubmit: async (ev) => {
    ev.preventDefault();
    busy(true);
    statusLine(status, register ? 'Creating your account…' : 'Logging in…');
    try {
      await logIn(user.value.trim().toLowerCase(), pass.value, register);
    } catch (e) {
      busy(false);
      const text = {
        bad_credentials: 'Wrong username or password.',
        username_taken: 'That username is taken.',
        invalid_username: 'Usernames are 3–32 characters: a–z, 0–9, _ and ., starting with a letter.',
        invalid_password: 'Passwords need at least 8 characters.',
        rate_limited: 'Too many attempts. Wait a moment and try again.',
      }[e.code] || e.message || 'Something went wrong.';
      statusLine(status, text, 'error');
    } finally {
      register = false;
    }
  } },
  h('h1', { id: 'login-title', tabindex: '-1' }, 'Parley'),
  h('p', {}, 'Log in, or create an account with a new username.'),
  h('label', { for: 'username' }, 'Username'), user,
  h('label', { for: 'password' }, 'Password'), pass,
  status,
  h('div', { class: 'row' },
    h('button', { type: 'submit', class: 'primary', onclick: () => (register = false) }, 'Log in'),
    h('button', { type: 'submit', id: 'register', onclick: () => (register = true) }, 'Create account')));
  main.append(form);
  return { focus: user };
}

// ---- conversation list

function chatsScreen(main) {
  const list = h('ul', { class: 'conv-list', 'aria-label': 'Conversations' });
  const empty = h('p', { class: 'empty' }, 'No conversations yet. Find someone under ', h('a', { href: '#/contacts' }, 'Contacts'), '.');
  main.append(heading('Chats'), empty, list);
  return {
    update() {
      const convs = conversationsByActivity(app.state);
      empty.hidden = convs.length > 0;
      syncList(list, convs, (c) => c.id, (c) => {
        const li = h('li');
        li.append(h('a', { href: `#/chat/${c.id}`, class: 'conv' }));
        return li;
      }, (li, c) => {
        const peer = peerOf(app.state, c);
        const name = displayName(app.state, peer.user_id, peer.username);
        const pending = app.outbox.filter((o) => o.conversation_id === c.id);
        const lastMsg = c.messages[c.messages.length - 1];
        const last = pending.length ? pending[pending.length - 1] : lastMsg;
        const mine = last && (last.sender_id === undefined || last.sender_id === app.state.me.user_id);
        const draft = draftOf(c);
        const lastText = last?.deleted ? deletedText(last) : last?.body;
        // Selective sync: newer messages than the cached ones exist (a
        // summary said so); they load when the chat is opened.
        const missing = missingNewest(c) && !pending.length;
        const preview = isTyping(c.id) ? 'typing…' : draft ? `Draft: ${draft}` : missing ? notLoadedText(c)
          : last ? `${mine ? 'You: ' : ''}${lastText}` : 'No messages yet';
        const pres = presenceText(peer.user_id, false);
        const a = li.firstChild;
        a.dataset.unread = String(c.unread);
        a.dataset.summarised = missing ? '1' : '0';
        a.dataset.lastSeq = String(c.lastSeq);
        a.replaceChildren(
          presenceDot(peer.user_id),
          h('span', { class: 'conv-main' },
            h('span', { class: 'conv-name' }, name, pres ? visuallyHidden(`, ${pres}`) : ''),
            h('span', { class: 'conv-preview' }, preview)),
          h('span', { class: 'conv-meta' },
            last?.ts && !missing ? h('time', { datetime: new Date(last.ts).toISOString() }, formatTime(last.ts)) : '',
            c.unread ? h('span', { class: 'badge' }, String(c.unread), visuallyHidden(' unread')) : ''));
      });
    },
  };
}

// The preview of a conversation whose newest messages are not loaded yet.
function notLoadedText(c) {
  if (c.unread === 1) return '1 new message · open to load';
  if (c.unread > 1) return `${c.unread} new messages · open to load`;
  return 'Newer messages not loaded yet';
}

// ---- chat

function chatScreen(main, r) {
  const conv = app.state.convs[r.id];
  if (!conv) {
    main.append(heading('Chat not found'), h('p', {}, h('a', { href: '#/chats' }, 'Back to chats')));
    return {};
  }
  const peer = peerOf(app.state, conv);
  const title = heading(displayName(app.state, peer.user_id, peer.username));
  const sub = h('p', { class: 'chat-sub', id: 'chat-status', 'aria-live': 'polite' });
  const blockBtn = h('button', { type: 'button', class: 'small', onclick: () => toggleBlock(peer.username, peer.user_id, note) });
  const note = h('p', { class: 'notice', role: 'status' });
  // Disappearing messages (set_disappearing): any member sets the timer for both.
  const timer = h('select', { id: 'disappearing', onchange: () => setDisappearing(conv.id, Number(timer.value), note) },
    ...kDisappearingChoices.map(([secs, label]) => h('option', { value: String(secs) }, label)));
  const older = h('button', { type: 'button', class: 'small older', onclick: () => loadOlder(conv.id) }, 'Load older messages');
  const log = h('ol', { class: 'messages' });
  // Selective sync: shown while the newest messages are still being paged in.
  const loading = h('p', { class: 'hint', id: 'chat-loading', role: 'status' }, 'Loading newer messages…');
  const scroller = h('div', { class: 'scroller', role: 'log', 'aria-label': `Messages with ${peer.username}`, tabindex: '0' }, older, log, loading);
  const input = h('textarea', { id: 'composer', rows: 1, maxlength: kMaxBodyLength, placeholder: 'Message', 'aria-label': `Message to ${peer.username}` });
  const form = h('form', { class: 'composer', onsubmit: (ev) => {
    ev.preventDefault();
    const body = input.value.trim();
    if (!body) return;
    input.value = '';
    shownDraft = '';
    stopTyping();
    dropDraft(conv.id);
    compose(conv.id, body);
  } }, input, h('button', { type: 'submit', class: 'primary' }, 'Send'));
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });
  input.addEventListener('input', () => {
    typingInput(conv.id, !input.value.trim());
    draftInput(conv.id, input.value);
  });
  // The draft: restored here; replaced by one saved on another device only
  // while nothing typed here waits to be saved.
  let shownDraft = conv.draft || '';
  input.value = draftOf(conv);
  scroller.addEventListener('scroll', () => {
    if (scroller.scrollTop < kLoadOlderThresholdPx) loadOlder(conv.id);
  });
  main.classList.add('chat-main');
  main.append(h('div', { class: 'chat-head' },
    h('a', { href: '#/chats', class: 'back' }, h('span', { 'aria-hidden': 'true' }, '‹ '), 'Chats'),
    h('div', { class: 'chat-title' }, title, sub), blockBtn),
  h('p', { class: 'chat-tools' }, h('label', { for: 'disappearing' }, 'Disappearing messages '), timer),
  note, scroller, form);
  let lastCount = -1;
  // Re-renders this screen while it is the one shown (requests answer late).
  const changes = messageChanges(conv.id, log, note, () => app.state && app.screen === screen && screen.update());
  const screen = {
    focus: input,
    update() {
      const c = app.state.convs[conv.id];
      const blocked = app.state.blocked.includes(peer.user_id);
      setText(blockBtn, blocked ? 'Unblock' : 'Block');
      const secs = String(c.disappearing || 0);
      if (document.activeElement !== timer) {
        if (![...timer.options].some((o) => o.value === secs)) timer.append(h('option', { value: secs }, `${secs} s`));
        timer.value = secs;
      }
      setText(title, displayName(app.state, peer.user_id, peer.username));
      setText(sub, blocked ? 'blocked' : isTyping(c.id) ? 'typing…' : presenceText(peer.user_id, true));
      sub.dataset.typing = isTyping(c.id) ? '1' : '0';
      older.hidden = c.historyDone || missingNewest(c);
      loading.hidden = !missingNewest(c);
      setText(loading, app.authed ? 'Loading newer messages…' : 'Newer messages load when you are back online.');
      if (!app.state.pendingDrafts[c.id] && (c.draft || '') !== shownDraft) {
        shownDraft = c.draft || '';
        if (input.value !== shownDraft) input.value = shownDraft;
      }
      const pending = app.outbox.filter((o) => o.conversation_id === c.id && !c.messages.some((m) => m.client_id === o.client_id && m.sender_id === app.state.me.user_id));
      const items = [...c.messages, ...pending];
      const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < kStickToBottomPx;
      const firstBefore = log.firstElementChild;
      const offsetBefore = firstBefore ? firstBefore.offsetTop - scroller.scrollTop : 0;
      syncList(log, items, (m) => (m.seq !== undefined ? `s${m.seq}` : `c${m.client_id}`), (m) => {
        const mine = m.sender_id === undefined || m.sender_id === app.state.me.user_id;
        return h('li', { class: `msg ${mine ? 'mine' : 'theirs'}` });
      }, (li, m) => {
        const mine = m.sender_id === undefined || m.sender_id === app.state.me.user_id;
        const tick = mine ? tickOf(app.state, c, m) : '';
        li.message = m; // what its actions act on
        const rendered = `${m.version || 0}${m.deleted ? 'd' : ''}${changes.uiOf(m)}`;
        if (li.dataset.tick === tick && li.dataset.rendered === rendered) return;
        li.dataset.rendered = rendered;
        li.dataset.tick = tick;
        if (m.deleted) li.dataset.deleted = '1';
        else delete li.dataset.deleted;
        if (m.seq !== undefined) li.dataset.seq = String(m.seq);
        li.dataset.clientId = m.client_id;
        const who = mine ? 'You' : displayName(app.state, peer.user_id, peer.username);
        const focused = li.contains(document.activeElement) ? document.activeElement : null;
        const editor = changes.editorOf(m);
        li.replaceChildren(
          visuallyHidden(`${who}: `),
          editor || (m.deleted ? h('p', { class: 'body deleted' }, deletedText(m)) : h('p', { class: 'body' }, m.body)),
          h('span', { class: 'meta' },
            m.version && !m.deleted ? h('span', { class: 'edited' }, 'edited') : '',
            m.ts ? h('time', { datetime: new Date(m.ts).toISOString() }, formatTime(m.ts)) : '',
            mine ? tickIcon(tick, m) : ''),
          tick === 'failed' ? h('span', { class: 'actions' },
            h('button', { type: 'button', class: 'small', onclick: () => retryFailed(m) }, 'Retry'),
            h('button', { type: 'button', class: 'small', onclick: () => discardFailed(m) }, 'Discard')) : '',
          changes.triggerOf(li, m),
          changes.panelOf(m));
        // Moved, not rebuilt: what had the focus (the actions button, the
        // editor, a menu item) keeps it.
        if (focused && li.contains(focused) && document.activeElement !== focused) focused.focus({ preventScroll: true });
      });
      if (items.length !== lastCount) {
        if (lastCount < 0 || atBottom || (items.length && items[items.length - 1].sender_id === undefined)) scroller.scrollTop = scroller.scrollHeight;
        else if (firstBefore && firstBefore.isConnected) scroller.scrollTop = firstBefore.offsetTop - offsetBefore;
        lastCount = items.length;
      }
      reportReceipts();
    },
  };
  return screen;
}

// ---- editing and deleting messages (docs/protocol.md, edit_message and
// delete_message). Each sent message has an actions button opening a small
// menu: "Edit" and "Delete for everyone" on the user's own messages while the
// server's windows (the auth result's limits) are open, "Delete for me" on
// any. Edits happen in place (Enter saves, Escape cancels); a delete for
// everyone asks first. The server has the last word: what it refuses is
// said in the chat's status line, and a refused edit stays in its editor.

const kChangeErrors = {
  edit_window_closed: 'Too late to edit this message: the time for edits is over.',
  delete_window_closed: 'Too late to delete this message for everyone. You can still delete it for yourself.',
  message_deleted: 'This message was deleted, so it cannot be edited.',
  forbidden: 'You can only edit or delete your own messages for everyone.',
  unknown_message: 'This message is not available any more.',
  not_member: 'You are not in this conversation.',
  body_too_large: 'The message is too long.',
  rate_limited: 'Too many changes at once. Wait a moment and try again.',
};

function changeError(e) {
  return kChangeErrors[e.code] || offlineAware(e);
}

// Whether `m`'s window named `limit` (edit_window_ms, delete_window_ms) is
// still open by this device's clock; unknown limits count as closed.
function withinWindow(m, limit) {
  const ms = app.limits?.[limit];
  return typeof ms === 'number' && typeof m.ts === 'number' && Date.now() <= m.ts + ms;
}

// Requests that need an authenticated connection (not one still in auth).
function changeRequest(type, fields) {
  if (!app.authed) return Promise.reject(new ProtocolError({ code: 'disconnected', message: 'not connected', retryable: true }));
  return app.conn.request(type, fields);
}

// The actions of the messages of one chat screen. `refresh` re-renders the
// screen; the open menu, confirmation and editor are kept here (one at a
// time) and their elements reused across renders.
function messageChanges(convId, log, note, refresh) {
  const ui = { seq: 0, kind: '', el: null, edit: null }; // kind: 'menu', 'confirm' or 'edit'
  const find = (seq) => app.state?.convs[convId]?.messages.find((x) => x.seq === seq);
  const trigger = (seq) => log.querySelector(`li[data-seq="${seq}"] button.msg-actions`);
  const mineOf = (m) => m.sender_id === app.state.me.user_id;

  function close(returnFocus) {
    const seq = ui.seq;
    ui.seq = 0;
    ui.kind = '';
    ui.el = null;
    ui.edit = null;
    refresh();
    if (returnFocus && seq) trigger(seq)?.focus();
  }

  function show(m, kind, el, focus) {
    ui.seq = m.seq;
    ui.kind = kind;
    ui.el = el;
    if (kind !== 'edit') ui.edit = null;
    refresh();
    focus?.focus();
  }

  // Closes what is open when the focus leaves it for good (not when a
  // re-render moves it, not to its own actions button, whose click toggles).
  function closeOnLeave(el) {
    el.addEventListener('focusout', () => setTimeout(() => {
      if (ui.el !== el || el.contains(document.activeElement) || document.activeElement === trigger(ui.seq)) return;
      close(false);
    }, 0));
  }

  function openMenu(m) {
    const items = [];
    if (mineOf(m) && !m.deleted && withinWindow(m, 'edit_window_ms')) items.push(['Edit', () => startEdit(m.seq)]);
    if (mineOf(m) && !m.deleted && withinWindow(m, 'delete_window_ms')) items.push(['Delete for everyone', () => confirmDelete(m.seq)]);
    items.push(['Delete for me', () => remove(m.seq, 'me')]);
    const buttons = items.map(([label, fn]) => h('button', { type: 'button', role: 'menuitem', tabindex: '-1', onclick: fn }, label));
    const menu = h('div', { class: 'msg-menu', role: 'menu', id: `msg-menu-${m.seq}`, 'aria-label': 'Message actions' }, buttons);
    menu.addEventListener('keydown', (ev) => {
      const i = buttons.indexOf(document.activeElement);
      const to = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: buttons.length - 1 }[ev.key];
      if (to !== undefined) {
        ev.preventDefault();
        buttons[(to + buttons.length) % buttons.length].focus();
      } else if (ev.key === 'Escape' || ev.key === 'Tab') {
        ev.preventDefault();
        close(true);
      }
    });
    closeOnLeave(menu);
    show(m, 'menu', menu, buttons[0]);
  }

  function confirmDelete(seq) {
    const m = find(seq);
    if (!m) return close(false);
    const cancel = h('button', { type: 'button', class: 'small', onclick: () => close(true) }, 'Cancel');
    const box = h('div', { class: 'msg-confirm', role: 'group', 'aria-labelledby': `msg-confirm-${seq}` },
      h('p', { id: `msg-confirm-${seq}` }, 'Delete this message for everyone?'),
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'small danger', onclick: () => remove(seq, 'everyone') }, 'Delete'), cancel));
    box.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') {
        ev.preventDefault();
        close(true);
      }
    });
    closeOnLeave(box);
    show(m, 'confirm', box, cancel);
  }

  async function remove(seq, which) {
    close(false);
    try {
      const r = await changeRequest('delete_message', { conversation_id: convId, seq, for: which });
      if (!app.state) return;
      // As the stream's events will say (applying them again changes nothing).
      if (which === 'me') applyEvent(app.state, { kind: 'delete_for_me', conversation_id: convId, seq });
      else {
        const m = find(seq);
        if (m) applyChange(m, { deleted: true, version: r.version, deleted_at: r.deleted_at });
      }
      // Stored at once, not on the debounced save: a reload right after the
      // answer must not show the message again until sync re-applies it.
      await saveNow();
      if (!app.state) return;
      refresh();
      statusLine(note, which === 'me' ? 'Message deleted for you.' : 'Message deleted for everyone.');
      if (which === 'me') log.parentElement.focus(); // its own button went with it
      else trigger(seq)?.focus();
    } catch (e) {
      statusLine(note, changeError(e), 'error');
      trigger(seq)?.focus();
    }
  }

  function startEdit(seq) {
    const m = find(seq);
    if (!m || m.deleted) return close(false);
    const hintId = `msg-edit-hint-${seq}`;
    const text = h('textarea', { class: 'edit-input', rows: 2, maxlength: kMaxBodyLength, 'aria-label': 'Edit message', 'aria-describedby': hintId });
    text.value = m.body;
    const save = h('button', { type: 'submit', class: 'small primary' }, 'Save');
    const form = h('form', { class: 'msg-edit', onsubmit: (ev) => {
      ev.preventDefault();
      saveEdit(seq);
    } }, text,
    h('p', { class: 'hint', id: hintId }, 'Enter saves, Escape cancels.'),
    h('div', { class: 'actions' }, save, h('button', { type: 'button', class: 'small', onclick: () => close(true) }, 'Cancel')));
    text.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        form.requestSubmit();
      } else if (ev.key === 'Escape') {
        ev.preventDefault();
        close(true);
      }
    });
    ui.edit = { text, save, clientId: '', sentBody: null, busy: false };
    show(m, 'edit', form, text);
    text.setSelectionRange(text.value.length, text.value.length);
  }

  async function saveEdit(seq) {
    const edit = ui.edit;
    const m = find(seq);
    if (!edit || edit.busy) return;
    if (!m || m.deleted) return close(true);
    const body = edit.text.value.trim();
    if (!body) {
      statusLine(note, 'A message cannot be empty. To remove it, delete it.', 'error');
      return;
    }
    if (body === m.body) return close(true);
    // One client id per text: a retry after a lost answer is the same edit.
    if (edit.sentBody !== body) {
      edit.clientId = crypto.randomUUID();
      edit.sentBody = body;
    }
    edit.busy = true;
    edit.save.disabled = true;
    try {
      const r = await changeRequest('edit_message', { conversation_id: convId, seq, client_id: edit.clientId, body });
      const now = find(seq);
      if (now) applyChange(now, { version: r.version, body, edited_at: r.edited_at });
      await saveNow(); // at once, as for deletes (a reload right after must show the edit)
      statusLine(note, 'Message edited.');
      if (ui.edit === edit) close(true);
    } catch (e) {
      statusLine(note, changeError(e), 'error'); // the text stays in the editor
      edit.text.focus();
    } finally {
      edit.busy = false;
      edit.save.disabled = false;
    }
  }

  return {
    // A part of the render key: which of menu, confirmation, editor it shows.
    uiOf(m) {
      return m.seq !== undefined && m.seq === ui.seq ? ui.kind[0] : '';
    },
    // The editor in place of the text while `m` is edited.
    editorOf(m) {
      if (m.seq === undefined || m.seq !== ui.seq || ui.kind !== 'edit') return null;
      if (m.deleted) { // deleted meanwhile (on another device): nothing to edit
        setTimeout(() => close(false), 0);
        return null;
      }
      return ui.el;
    },
    // The actions button of a sent message (one per element, reused).
    triggerOf(li, m) {
      if (m.seq === undefined || (m.seq === ui.seq && ui.kind === 'edit')) return ''; // the editor has its own buttons
      li.actionsButton ||= h('button', { type: 'button', class: 'msg-actions', 'aria-label': 'Message actions', 'aria-haspopup': 'menu',
        onclick: () => (ui.seq === li.message.seq && ui.kind === 'menu' ? close(true) : openMenu(li.message)) }, '⋯');
      const open = ui.seq === m.seq && ui.kind === 'menu';
      li.actionsButton.setAttribute('aria-expanded', String(open));
      if (open) li.actionsButton.setAttribute('aria-controls', `msg-menu-${m.seq}`);
      else li.actionsButton.removeAttribute('aria-controls');
      return li.actionsButton;
    },
    // The open menu or confirmation under `m`.
    panelOf(m) {
      return m.seq !== undefined && m.seq === ui.seq && ui.kind !== 'edit' ? ui.el : '';
    },
  };
}

function tickIcon(tick, m) {
  const label = { pending: 'Sending', sent: 'Sent', delivered: 'Delivered', read: 'Read', failed: m.error || 'Not sent' }[tick];
  const glyph = { pending: '…', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '!' }[tick];
  return h('span', { class: `tick ${tick}`, role: 'img', 'aria-label': label, title: label }, glyph);
}

async function retryFailed(entry) {
  entry.failed = false;
  entry.error = '';
  entry.created_at = Date.now(); // a new chance of the full outbox age
  await outbox.put(entry);
  scheduleRender();
  flushOutbox();
}

async function discardFailed(entry) {
  await removeFromOutbox(entry);
  scheduleRender();
}

async function loadOlder(convId) {
  const conv = app.state.convs[convId];
  // A summarised conversation is paged from its newest first (fill).
  if (!conv || conv.historyDone || missingNewest(conv) || app.historyLoading || !app.authed) return;
  app.historyLoading = true;
  try {
    const before = conv.messages.length ? conv.messages[0].seq : 0;
    const r = await app.conn.request('history', { conversation_id: convId, before, limit: kHistoryPageLimit });
    addWithheld(conv, r.withheld);
    addMessages(conv, r.messages);
    if (!r.has_more) conv.historyDone = true;
    recountUnread(app.state, conv);
    scheduleSave();
    scheduleRender();
  } catch {
    /* retried on the next scroll */
  } finally {
    app.historyLoading = false;
  }
}

async function toggleBlock(username, userId, note) {
  const blocked = app.state.blocked.includes(userId);
  try {
    await app.conn.request(blocked ? 'unblock' : 'block', { username });
    if (blocked) app.state.blocked = app.state.blocked.filter((x) => x !== userId);
    else if (!app.state.blocked.includes(userId)) app.state.blocked.push(userId);
    statusLine(note, blocked ? `You unblocked ${username}.` : `You blocked ${username}. You will not see their messages.`);
    scheduleRender();
  } catch (e) {
    statusLine(note, offlineAware(e), 'error');
  }
}

function offlineAware(e) {
  return e.code === 'disconnected' ? 'You are offline. Try again when you are connected.' : e.message;
}

async function openChat(username, note) {
  try {
    const r = await app.conn.request('open_conversation', { username });
    const c = r.conversation;
    if (!app.state.convs[c.conversation_id]) {
      applyEntry(app.state, { conversation: c, messages: [], watermarks: [], unread: 0, last_activity_at: c.created_at });
      if (c.last_seq > 0) app.state.convs[c.conversation_id].historyDone = false;
      await saveNow(); // a reload finds the new chat even before its first event
    }
    location.hash = `#/chat/${c.conversation_id}`;
    if (c.last_seq > 0 && !app.state.convs[c.conversation_id].messages.length) loadOlder(c.conversation_id);
  } catch (e) {
    statusLine(note, offlineAware(e), 'error');
  }
}

// ---- contacts

function personRow(p, actions) {
  return h('li', { class: 'person' },
    presenceDot(p.user_id),
    h('span', { class: 'person-name' },
      h('span', { class: 'conv-name' }, p.display_name || p.username),
      h('span', { class: 'conv-preview' }, `@${p.username}${presenceText(p.user_id, false) ? ` · ${presenceText(p.user_id, false)}` : ''}`)),
    h('span', { class: 'actions' }, actions));
}

function contactsScreen(main) {
  const note = h('p', { class: 'notice', role: 'status', id: 'contacts-note' });
  const q = h('input', { id: 'search', type: 'search', name: 'q', autocomplete: 'off', maxlength: kMaxSearchLength });
  const results = h('ul', { class: 'people', id: 'search-results', 'aria-label': 'Search results' });
  const contacts = h('ul', { class: 'people', id: 'contact-list', 'aria-labelledby': 'contacts-title' });
  const blocked = h('ul', { class: 'people', id: 'blocked-list', 'aria-labelledby': 'blocked-title' });
  let found = [];
  const form = h('form', { role: 'search', class: 'search', onsubmit: async (ev) => {
    ev.preventDefault();
    const query = q.value.trim();
    if (!query) return;
    try {
      const r = await app.conn.request('search_users', { query, limit: kSearchLimit });
      found = r.users;
      for (const u of found) app.state.profiles[u.user_id] = u;
      statusLine(note, found.length ? `${found.length} found.` : `Nobody found for “${query}”.`);
    } catch (e) {
      statusLine(note, offlineAware(e), 'error');
    }
    render();
  } }, h('label', { for: 'search' }, 'Search users by name'), h('div', { class: 'row' }, q, h('button', { type: 'submit' }, 'Search')));

  const act = (label, fn, who) => h('button', { type: 'button', class: 'small', 'aria-label': `${label} ${who}`, onclick: fn }, label);
  const social = async (type, p, done) => {
    try {
      await app.conn.request(type, { username: p.username });
      statusLine(note, done);
    } catch (e) {
      statusLine(note, offlineAware(e), 'error');
    }
  };
  function render() {
    const s = app.state;
    const rowFor = (p) => {
      const isContact = s.contacts.includes(p.user_id);
      const isBlocked = s.blocked.includes(p.user_id);
      return personRow(p, [
        act('Message', () => openChat(p.username, note), p.username),
        isContact ? act('Remove', () => social('remove_contact', p, `${p.username} removed from contacts.`), p.username)
          : act('Add', () => social('add_contact', p, `${p.username} added to contacts.`), p.username),
        isBlocked ? act('Unblock', () => toggleBlock(p.username, p.user_id, note), p.username)
          : act('Block', () => toggleBlock(p.username, p.user_id, note), p.username),
      ]);
    };
    const keep = document.activeElement?.getAttribute('aria-label');
    results.replaceChildren(...found.map(rowFor));
    contacts.replaceChildren(...s.contacts.map((id) => s.profiles[id]).filter(Boolean).map(rowFor));
    blocked.replaceChildren(...s.blocked.map((id) => s.profiles[id]).filter(Boolean).map((p) =>
      personRow(p, [act('Unblock', () => toggleBlock(p.username, p.user_id, note), p.username)])));
    contactsEmpty.hidden = s.contacts.length > 0;
    blockedEmpty.hidden = s.blocked.length > 0;
    if (keep && main.contains(document.activeElement) === false) {
      const again = [...main.querySelectorAll('button')].find((b) => b.getAttribute('aria-label') === keep);
      again?.focus();
    }
  }
  const contactsEmpty = h('p', { class: 'empty' }, 'No contacts yet.');
  const blockedEmpty = h('p', { class: 'empty' }, 'You block nobody.');
  main.append(heading('Contacts'), form, note, results,
    h('h2', { id: 'contacts-title' }, 'Your contacts'), contactsEmpty, contacts,
    h('h2', { id: 'blocked-title' }, 'Blocked'), blockedEmpty, blocked);
  return { update: render };
}

// ---- devices

// One line on a device's push endpoint and how its last push went
// (docs/protocol.md, list_devices: `push`).
function pushHealth(p) {
  const parts = [`Push: ${p.provider}`];
  if (!p.last_attempt_at) {
    parts.push(p.pending ? 'first push queued' : 'nothing sent yet');
  } else if (p.last_result === 'ok') {
    parts.push(`last delivered ${formatWhen(p.last_success_at)}`);
  } else {
    parts.push(`last attempt failed (${p.last_result}) ${formatWhen(p.last_attempt_at)}`);
    if (p.last_success_at) parts.push(`last delivered ${formatWhen(p.last_success_at)}`);
  }
  if (p.failure_count > 0) parts.push(`${p.failure_count} failed ${p.failure_count === 1 ? 'attempt' : 'attempts'}`);
  return parts.join(' · ');
}

function devicesScreen(main) {
  const note = h('p', { class: 'notice', role: 'status' });
  const list = h('ul', { class: 'people', 'aria-label': 'Devices' });
  async function load() {
    if (!app.authed) {
      statusLine(note, 'Connect to see your devices.');
      return;
    }
    try {
      const r = await app.conn.request('list_devices');
      list.replaceChildren(...r.devices.map((d) => h('li', { class: 'person', dataset: { deviceId: String(d.device_id) } },
        h('span', { class: 'person-name' },
          h('span', { class: 'conv-name' }, d.name || `Device ${d.device_id}`, d.current ? ' (this device)' : ''),
          h('span', { class: 'conv-preview' }, [d.platform, d.last_seen_at ? `active ${formatWhen(d.last_seen_at)}` : `added ${formatWhen(d.created_at)}`].filter(Boolean).join(' · ')),
          d.push ? h('span', { class: 'conv-preview push-health', dataset: { pushResult: d.push.last_result || 'none' } }, pushHealth(d.push)) : null),
        h('span', { class: 'actions' }, d.current
          ? h('button', { type: 'button', class: 'small', onclick: () => logOut() }, 'Log out')
          : h('button', { type: 'button', class: 'small', 'aria-label': `Unlink ${d.name || `device ${d.device_id}`}`, onclick: async () => {
            try {
              await app.conn.request('unlink_device', { device_id: d.device_id });
              statusLine(note, 'Device unlinked.');
              load();
            } catch (e) {
              statusLine(note, offlineAware(e), 'error');
            }
          } }, 'Unlink')))));
    } catch (e) {
      statusLine(note, offlineAware(e), 'error');
    }
  }
  main.append(heading('Devices'), h('p', {}, 'Devices signed in to your account. Unlinking signs a device out at once.'), note, list);
  let loadedWhileAuthed = false;
  return {
    update() {
      if (app.authed && !loadedWhileAuthed) {
        loadedWhileAuthed = true;
        load();
      }
    },
  };
}

// ---- profile

function profileScreen(main) {
  const s = app.state;
  const me = s.profiles[s.me.user_id] || {};
  const note = h('p', { class: 'notice', role: 'status', id: 'profile-note' });
  const name = h('input', { id: 'display-name', maxlength: kMaxDisplayNameLength, value: me.display_name || '', autocomplete: 'name' });
  const about = h('input', { id: 'about', maxlength: kMaxAboutLength, value: me.about || '' });
  const privacy = h('select', { id: 'privacy' },
    ...[['everyone', 'Everyone'], ['contacts', 'My contacts'], ['nobody', 'Nobody']].map(([v, t]) => h('option', { value: v }, t)));
  privacy.value = s.privacy || 'everyone';
  const privacyNote = h('p', { class: 'hint', id: 'privacy-hint' }, 'Who sees when you are online and when you were last seen.');
  privacy.setAttribute('aria-describedby', 'privacy-hint');
  const save = h('form', { class: 'card', 'aria-label': 'Profile', onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const r = await app.conn.request('set_profile', { display_name: name.value.trim(), about: about.value.trim() });
      s.profiles[s.me.user_id] = r.profile;
      scheduleSave();
      statusLine(note, 'Profile saved.');
    } catch (e) {
      statusLine(note, offlineAware(e), 'error');
    }
  } },
  h('p', {}, 'Username: ', h('strong', {}, `@${s.me.username}`)),
  h('label', { for: 'display-name' }, 'Display name'), name,
  h('label', { for: 'about' }, 'About'), about,
  h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary' }, 'Save profile')));
  const privacyForm = h('form', { class: 'card', 'aria-label': 'Privacy', onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const r = await app.conn.request('set_privacy', { presence: privacy.value });
      s.privacy = r.presence || privacy.value;
      scheduleSave();
      statusLine(note, 'Privacy saved.');
    } catch (e) {
      presenceError(e);
      statusLine(note, e.code === 'unknown_type' ? 'This server does not support presence settings yet.' : offlineAware(e), 'error');
    }
  } },
  h('label', { for: 'privacy' }, 'Show my online status and last seen to'), privacy, privacyNote,
  h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Save privacy')));
  main.append(heading('Profile'), note, save, privacyForm,
    h('div', { class: 'row' }, h('button', { type: 'button', id: 'logout', onclick: () => logOut() }, 'Log out')));
  return {};
}

// Exposed for the browser tests' diagnostics only.
window.parleyDebug = { get state() { return app.state; }, get outbox() { return app.outbox; } };

main();
