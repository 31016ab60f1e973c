// The client's copy of the user's data, derived from the user stream
// (docs/protocol.md, "Events and the user stream" and "Sync algorithm") and
// persisted in IndexedDB together with `applied`, the highest user seq it
// reflects. Plain objects only, so it can be stored as is.
//
// Unread counts: the server's count arrives with the snapshot; afterwards it
// is kept from the stream (a message from the other member above our read
// watermark adds one; a receipt with our own user id recounts). Messages
// older than the locally cached ones that were unread in the snapshot are
// kept as `hiddenUnread` until the read watermark passes them.
//
// Edits and deletes (docs/protocol.md, "Edits and deletes"): a message keeps
// the `version` of its text; an `edit` (or a message object read later) with
// a higher version replaces the text, a `delete` makes it a tombstone
// (`deleted`, no text) for good, and a `delete_for_me` removes it from this
// copy and remembers its seq (`hidden`) so no later page brings it back.
// Retention (docs/protocol.md, "Retention"): a message with `expires_at`
// becomes a tombstone at that time by this device's clock (expireMessages,
// run by app.js every second), whether or not the server's `delete` event
// has arrived; `disappearing` is the conversation's timer in seconds.
// Drafts: `draft` is the server's draft of the conversation (snapshot and
// `draft` events, applied in stream order: the last is the newest);
// `pendingDrafts` (conversation id -> {text, at}) the ones typed here and
// not yet saved, which win until they are (app.js).
//
// Selective sync (docs/protocol.md "select_sync"; app.js says when): a
// conversation outside the connection's selection reaches this copy as
// `summary` entries. One raises `lastSeq`, makes `serverUnread` the server's
// unread count (shown as is while it stands: the cached messages may miss
// the newest) and marks the conversation `summarised` (messages up to
// lastSeq may be missing). Opening it selects it (`selectedHead`: the head of
// the select_sync answer; an older summary that arrives late changes no
// count) and pages its history until the cache holds every unread message
// (applyFill); from then on the cached messages count, as for any
// conversation. `state.opened` lists the conversations the user opened, to
// select again on every connection (kept across a reload and a snapshot).

export const kMaxCachedMessages = 500; // per conversation; older pages come from history

export function emptyState(me) {
  return {
    me, // {user_id, username, device_id}
    applied: null, // null: take a snapshot first
    convs: {}, // conversation_id -> conversation (below)
    profiles: {}, // user_id -> {user_id, username, display_name, about}
    contacts: [], // user ids, ascending username
    blocked: [], // user ids
    privacy: null, // presence visibility, from `privacy` events or set here (null: never set, i.e. everyone)
    pendingDrafts: {}, // conversation_id -> {text, at}: typed here, not yet saved by set_draft
    opened: [], // conversation ids the user opened, oldest first: selected on every connection
  };
}

function newConv(c) {
  return {
    id: c.conversation_id,
    members: c.members || [],
    messages: [], // ascending seq: {seq, sender_id, client_id, body, ts, version?, edited_at?, deleted?}
    lastSeq: c.last_seq || 0,
    wm: {}, // user_id -> {delivered, read}
    unread: 0,
    hiddenUnread: 0,
    activity: c.created_at || 0,
    historyDone: false,
    withheld: [], // seqs that stay "sent" for ever
    hidden: [], // seqs deleted for me: never shown again
    draft: '', // the server's draft ('' : none)
    draftAt: 0,
    disappearing: c.disappearing_s || 0, // the disappearing-messages timer, seconds (0: off)
    summarised: false, // selective sync: messages up to lastSeq may be missing (summaries came instead)
    serverUnread: null, // selective sync: the server's unread count while a summary stands (null: count the cache)
    selectedHead: 0, // selective sync: the head of the select_sync answer that selected it
  };
}

export function peerOf(state, conv) {
  const m = conv.members.find((x) => x.user_id !== state.me.user_id);
  return m || { user_id: 0, username: '?' };
}

export function displayName(state, userId, fallback) {
  const p = state.profiles[userId];
  if (p && p.display_name) return p.display_name;
  if (p && p.username) return p.username;
  return fallback || '?';
}

function wmOf(conv, userId) {
  return conv.wm[userId] || { delivered: 0, read: 0 };
}

function raiseWm(conv, userId, delivered, read) {
  const w = wmOf(conv, userId);
  conv.wm[userId] = { delivered: Math.max(w.delivered, delivered, read), read: Math.max(w.read, read) };
}

// One rule for every change of a message, whatever order they arrive in:
// a tombstone stays one; a delete makes one; a higher version replaces the
// text; anything else changes nothing. Returns whether `m` changed.
export function applyChange(m, change) {
  if (m.deleted) return false;
  if (change.deleted) {
    m.deleted = true;
    m.body = '';
    m.version = change.version || m.version || 0;
    if (change.deleted_at) m.deleted_at = change.deleted_at;
    return true;
  }
  if ((change.version || 0) <= (m.version || 0)) return false;
  m.body = change.body;
  m.version = change.version;
  if (change.edited_at) m.edited_at = change.edited_at;
  return true;
}

export function addMessages(conv, msgs) {
  if (!msgs.length) return;
  conv.hidden ||= []; // states stored before edits and deletes
  const bySeq = new Map(conv.messages.map((m) => [m.seq, m]));
  for (const m of msgs) {
    conv.lastSeq = Math.max(conv.lastSeq, m.seq);
    if (conv.hidden.includes(m.seq)) continue;
    const known = bySeq.get(m.seq);
    if (known) {
      applyChange(known, m);
      // A message first added without its expiry (from a send's answer, by
      // a client before 2026-12-01, kept in a saved state) takes it from a
      // later copy, so it still disappears on time.
      if (m.expires_at && !known.expires_at && !known.deleted) known.expires_at = m.expires_at;
      continue;
    }
    const copy = { seq: m.seq, sender_id: m.sender_id, client_id: m.client_id, body: m.body, ts: m.ts };
    if (m.version) copy.version = m.version;
    if (m.edited_at) copy.edited_at = m.edited_at;
    if (m.expires_at) copy.expires_at = m.expires_at;
    if (m.reason) copy.reason = m.reason;
    if (m.deleted) {
      copy.deleted = true;
      copy.body = '';
      if (m.deleted_at) copy.deleted_at = m.deleted_at;
    }
    bySeq.set(m.seq, copy);
  }
  conv.messages = [...bySeq.values()].sort((a, b) => a.seq - b.seq);
  if (conv.messages.length > kMaxCachedMessages) {
    conv.messages = conv.messages.slice(conv.messages.length - kMaxCachedMessages);
    conv.historyDone = false;
  }
}

// Seqs that stay "sent" for ever (a past block): from receipt and message
// events, snapshot/list watermarks and history pages.
export function addWithheld(conv, seqs) {
  if (!seqs || !seqs.length) return;
  conv.withheld = [...new Set([...conv.withheld, ...seqs])];
}

export function recountUnread(state, conv) {
  if (typeof conv.serverUnread === 'number') {
    conv.unread = conv.serverUnread; // the cache may miss unread messages: the server's count stands
    return;
  }
  const me = state.me.user_id;
  const read = wmOf(conv, me).read;
  const oldest = conv.messages.length ? conv.messages[0].seq : Infinity;
  if (read >= oldest - 1) conv.hiddenUnread = 0;
  conv.unread = conv.hiddenUnread + conv.messages.filter((m) => m.sender_id !== me && m.seq > read).length;
}

// A snapshot or list_conversations entry.
export function applyEntry(state, entry) {
  const c = entry.conversation;
  const conv = state.convs[c.conversation_id] || newConv(c);
  conv.members = c.members;
  conv.lastSeq = Math.max(conv.lastSeq, c.last_seq || 0);
  conv.disappearing = c.disappearing_s || 0;
  state.convs[conv.id] = conv;
  addMessages(conv, entry.messages || []);
  for (const w of entry.watermarks || []) {
    addWithheld(conv, w.withheld);
    raiseWm(conv, w.user_id, w.delivered, w.read);
  }
  conv.activity = Math.max(conv.activity, entry.last_activity_at || 0);
  const me = state.me.user_id;
  const read = wmOf(conv, me).read;
  const local = conv.messages.filter((m) => m.sender_id !== me && m.seq > read).length;
  conv.hiddenUnread = Math.max(0, (entry.unread || 0) - local);
  conv.unread = conv.hiddenUnread + local;
  if ((entry.messages || []).length && entry.messages[0].seq === 1) conv.historyDone = true;
  if (conv.lastSeq === 0) conv.historyDone = true;
  conv.draft = entry.draft ? entry.draft.text : '';
  conv.draftAt = entry.draft ? entry.draft.updated_at : 0;
}

function ensureConv(state, id) {
  if (!state.convs[id]) state.convs[id] = newConv({ conversation_id: id, members: [] });
  return state.convs[id];
}

function setProfile(state, p) {
  if (p && p.user_id) state.profiles[p.user_id] = { ...p };
}

// Applies one stream event. Returns the conversation it touched, if any.
export function applyEvent(state, e) {
  const me = state.me.user_id;
  switch (e.kind) {
    case 'message': {
      const m = e.message;
      const conv = ensureConv(state, m.conversation_id);
      const known = conv.messages.some((x) => x.seq === m.seq);
      addMessages(conv, [m]);
      addWithheld(conv, e.withheld);
      conv.activity = Math.max(conv.activity, m.ts);
      if (m.sender_id === me) {
        raiseWm(conv, me, m.seq, m.seq); // sending reads everything before it
        if (typeof conv.serverUnread === 'number') conv.serverUnread = 0;
        recountUnread(state, conv);
      } else if (!known && !(conv.hidden || []).includes(m.seq) && m.seq > wmOf(conv, me).read) {
        if (typeof conv.serverUnread === 'number') conv.serverUnread += 1;
        conv.unread += 1;
      }
      return conv;
    }
    case 'receipt': {
      const conv = ensureConv(state, e.conversation_id);
      raiseWm(conv, e.user_id, e.delivered, e.read);
      addWithheld(conv, e.withheld);
      // Read to the end: nothing is unread, whatever the cache holds.
      if (e.user_id === me && typeof conv.serverUnread === 'number' && e.read >= conv.lastSeq) conv.serverUnread = 0;
      if (e.user_id === me) recountUnread(state, conv);
      return conv;
    }
    case 'summary':
      return applySummary(state, e);
    case 'conversation': {
      const c = e.conversation;
      const conv = ensureConv(state, c.conversation_id);
      conv.members = c.members;
      conv.activity = Math.max(conv.activity, c.created_at || 0);
      if (conv.lastSeq === 0 && !conv.messages.length) conv.historyDone = true;
      return conv;
    }
    case 'profile':
      setProfile(state, e.profile);
      return null;
    case 'contact': {
      setProfile(state, e.user);
      const id = e.user.user_id;
      state.contacts = state.contacts.filter((x) => x !== id);
      if (e.added) state.contacts.push(id);
      sortByUsername(state, state.contacts);
      return null;
    }
    case 'block': {
      setProfile(state, e.user);
      const id = e.user.user_id;
      state.blocked = state.blocked.filter((x) => x !== id);
      if (e.blocked) state.blocked.push(id);
      return null;
    }
    case 'privacy':
      state.privacy = e.presence; // set on any of the user's devices
      return null;
    case 'edit':
    case 'delete': {
      const conv = ensureConv(state, e.conversation_id);
      const m = conv.messages.find((x) => x.seq === e.seq);
      // Not cached: its state comes with it when it is paged in.
      // An edit with deleted_at was read after the message expired: a tombstone.
      if (m) applyChange(m, { deleted: e.kind === 'delete' || e.deleted_at !== undefined, version: e.version, body: e.body, edited_at: e.edited_at, deleted_at: e.deleted_at });
      if (m && e.reason) m.reason = e.reason;
      return conv;
    }
    case 'delete_for_me': {
      const conv = ensureConv(state, e.conversation_id);
      conv.hidden ||= [];
      const gone = conv.messages.find((x) => x.seq === e.seq);
      if (typeof conv.serverUnread === 'number' && gone && gone.sender_id !== me && e.seq > wmOf(conv, me).read)
        conv.serverUnread = Math.max(0, conv.serverUnread - 1); // an unread message deleted for me counts no more
      if (!conv.hidden.includes(e.seq)) conv.hidden.push(e.seq);
      conv.messages = conv.messages.filter((x) => x.seq !== e.seq);
      recountUnread(state, conv);
      return conv;
    }
    case 'disappearing': {
      const conv = ensureConv(state, e.conversation_id);
      conv.disappearing = e.seconds || 0;
      conv.disappearingAt = e.user_seq || 0; // an answer read before it must not undo it (setTimer)
      return conv;
    }
    case 'draft': {
      const conv = ensureConv(state, e.conversation_id);
      conv.draft = e.text || '';
      conv.draftAt = e.updated_at || 0;
      delete conv.clearedDraft; // the server's newer word
      return conv;
    }
    default:
      return null; // kinds this client does not know: skipped, cursor still advances
  }
}

// Sending clears the server's draft on screen now, as the server does when
// it stores the message (its `draft` event follows). The text is kept in
// `clearedDraft`: a message the server refuses never cleared it there, and
// no event will say so (restoreRefusedDraft).
export function clearDraftForSend(conv) {
  if (conv.draft) conv.clearedDraft = conv.draft;
  conv.draft = '';
}

// A set_draft answer (`result`: {changed, user_seq}) for `text`. The answer
// may come after its own `draft` event and later ones (a sync read, or an
// event written through another cluster node, can overtake it): the text is
// shown only while `applied` is below its event; after that the events say
// the same or newer. Unchanged (no event): the event that set this text is
// in the stream, so the events show it in turn. Returns whether it changed
// conv.draft.
export function draftSaved(conv, text, result, applied) {
  if (!result?.changed || !(result.user_seq > (applied || 0))) return false;
  conv.draft = text;
  conv.draftAt = Date.now();
  return true;
}

// A message to `conv` was refused for good (or stored: `stored`). Once no
// other queued message may still clear the server's draft (`stillQueued`),
// a refused one puts the server's draft back; a stored one settles it (the
// server cleared it, and says so with a `draft` event).
export function restoreRefusedDraft(conv, { stored = false, stillQueued = false } = {}) {
  if (conv.clearedDraft === undefined) return false;
  if (stored) {
    delete conv.clearedDraft;
    return false;
  }
  if (stillQueued) return false;
  const restored = !conv.draft;
  if (restored) conv.draft = conv.clearedDraft;
  delete conv.clearedDraft;
  return restored;
}

// A `summary` entry (selective sync): the conversation's current last seq
// and unread count in place of the events it covers (advanceApplied counts
// those as applied). One made before the conversation was selected
// (user_seq at or below selectedHead) may arrive after the selection's
// pages: it raises lastSeq and, while the conversation is still summarised,
// the count, but marks nothing missing any more (its count, read later than
// its place in the stream, may include messages that arrive in full after
// it). That holds when the conversation was paged since that selection
// (`pagedHead`) or the cache holds its last message; but it may also arrive
// after the selection's answer with nothing paged (the conversation was not
// summarised yet when the answer came): then its messages are missing, as
// for any summary. `now`: the time it is applied, the activity of a live
// summary that brings a new message.
export function applySummary(state, e, now = 0) {
  const conv = ensureConv(state, e.conversation_id);
  const newer = (e.last_seq || 0) > conv.lastSeq;
  conv.lastSeq = Math.max(conv.lastSeq, e.last_seq || 0);
  if (newer && now) conv.activity = Math.max(conv.activity, now);
  const late = e.user_seq <= (conv.selectedHead || 0);
  const held = conv.messages.length ? conv.messages[conv.messages.length - 1].seq : 0;
  const paged = (conv.pagedHead || 0) >= conv.selectedHead;
  // The cache holds it all: its count is exact.
  if (late && !conv.summarised && (paged || held >= (e.last_seq || 0))) return conv;
  conv.summarised = true;
  conv.serverUnread = e.unread || 0;
  recountUnread(state, conv);
  return conv;
}

// Whether `conv` has messages up to its lastSeq that this copy does not
// hold (summaries came instead of them).
export function missingNewest(conv) {
  const newest = conv.messages.length ? conv.messages[conv.messages.length - 1].seq : 0;
  return !!conv.summarised && conv.lastSeq > newest;
}

// Selective sync: whether history pages whose oldest message is `oldest`
// have joined the cached messages (there is no cached message between the
// newest cached one below them and them; live messages that arrived while
// paging are newer and do not count), or reached our read watermark (every
// unread message is held).
export function fillReached(state, conv, oldest) {
  const below = conv.messages.filter((m) => m.seq < oldest);
  const joined = oldest <= (below.length ? below[below.length - 1].seq : 0) + 1;
  return joined || oldest <= wmOf(conv, state.me.user_id).read + 1;
}

// The `history` pages read for a summarised conversation once selected
// (`messages`, any order; `hasMore`: the last page's) are folded in. When
// they did not join the cached messages, the cached ones older than them
// are dropped (they come back through "Load older": no hole is kept).
// Afterwards the conversation is no longer summarised and its unread count
// comes from the cache again: exact when the pages hold every unread message
// (they reached the read watermark, the cache or the first message), else
// (stopped at kMaxCachedMessages) the rest is kept as hiddenUnread, as for a
// snapshot.
export function applyFill(state, conv, messages, hasMore) {
  const me = state.me.user_id;
  const read = wmOf(conv, me).read;
  const oldest = messages.length ? Math.min(...messages.map((m) => m.seq)) : Infinity;
  const below = conv.messages.filter((m) => m.seq < oldest);
  const joined = !messages.length || !hasMore || oldest <= (below.length ? below[below.length - 1].seq : 0) + 1;
  const server = typeof conv.serverUnread === 'number' ? conv.serverUnread : conv.unread;
  if (!joined) {
    conv.messages = conv.messages.filter((m) => m.seq > oldest);
    conv.historyDone = false;
  }
  if (!hasMore) conv.historyDone = true;
  addMessages(conv, messages);
  // Held from here up (kMaxCachedMessages may have dropped the oldest pages).
  const heldOldest = conv.messages.length ? conv.messages[0].seq : Infinity;
  if (!joined || heldOldest > oldest) {
    const local = conv.messages.filter((m) => m.sender_id !== me && m.seq > read).length;
    conv.hiddenUnread = read >= heldOldest - 1 ? 0 : Math.max(0, server - local);
  }
  conv.summarised = false;
  conv.serverUnread = null;
  conv.pagedHead = conv.selectedHead || 0; // paged since that selection: later "late" summaries are held
  recountUnread(state, conv);
  return conv;
}

// The timer a set_disappearing answer reports, applied only if no
// `disappearing` event of the conversation was applied since the request
// went out (`appliedBefore`, the cursor then): such an event is the same
// change or a newer one, and the answer may reach us after it.
export function setTimer(conv, seconds, appliedBefore) {
  if ((conv.disappearingAt || 0) > (appliedBefore || 0)) return false;
  conv.disappearing = seconds;
  return true;
}

// Makes every cached message whose expires_at is at or before `now` a
// tombstone (its text leaves this copy, and IndexedDB with the next save).
// Returns the conversations it changed.
export function expireMessages(state, now) {
  const touched = [];
  for (const conv of Object.values(state.convs)) {
    let changed = false;
    for (const m of conv.messages) {
      if (m.expires_at && m.expires_at <= now && !m.deleted) {
        applyChange(m, { deleted: true, deleted_at: m.expires_at });
        m.reason = 'expired';
        changed = true;
      }
    }
    if (changed) touched.push(conv);
  }
  return touched;
}

export function sortByUsername(state, ids) {
  ids.sort((a, b) => (state.profiles[a]?.username || '').localeCompare(state.profiles[b]?.username || ''));
}

// Tick of one of our own messages (docs/protocol.md, "Receipts and ticks").
export function tickOf(state, conv, msg) {
  if (msg.seq === undefined) return msg.failed ? 'failed' : 'pending';
  if (conv.withheld.includes(msg.seq)) return 'sent';
  const peer = peerOf(state, conv);
  const w = wmOf(conv, peer.user_id);
  if (w.read >= msg.seq) return 'read';
  if (w.delivered >= msg.seq) return 'delivered';
  return 'sent';
}

export function conversationsByActivity(state) {
  return Object.values(state.convs)
    .filter((c) => c.members.length)
    .sort((a, b) => b.activity - a.activity || b.id - a.id);
}

export function myWatermark(state, conv) {
  return wmOf(conv, state.me.user_id);
}

// Sets `applied` past event `e`. A coalesced receipt lists in `also_covers`
// later user seqs folded into it that will not arrive live, and a summary
// its `covers` ranges; they are kept in `covered` and count as applied when
// their turn comes (protocol.md, "Sync algorithm").
export function advanceApplied(state, covered, e) {
  state.applied = e.user_seq;
  for (const seq of e.also_covers || []) if (seq > e.user_seq) covered.add(seq);
  // A summary stands for every user seq of its ranges (selective sync).
  if (e.kind === 'summary')
    for (const [from, to] of e.covers || []) for (let seq = Math.max(from, e.user_seq + 1); seq <= to; seq += 1) covered.add(seq);
  while (covered.has(state.applied + 1)) {
    covered.delete(state.applied + 1);
    state.applied += 1;
  }
  for (const seq of covered) if (seq <= state.applied) covered.delete(seq);
}
