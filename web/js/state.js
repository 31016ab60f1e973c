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
  };
}

function newConv(c) {
  return {
    id: c.conversation_id,
    members: c.members || [],
    messages: [], // ascending seq: {seq, sender_id, client_id, body, ts}
    lastSeq: c.last_seq || 0,
    wm: {}, // user_id -> {delivered, read}
    unread: 0,
    hiddenUnread: 0,
    activity: c.created_at || 0,
    historyDone: false,
    withheld: [], // seqs that stay "sent" for ever
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

export function addMessages(conv, msgs) {
  if (!msgs.length) return;
  const bySeq = new Map(conv.messages.map((m) => [m.seq, m]));
  for (const m of msgs) {
    bySeq.set(m.seq, { seq: m.seq, sender_id: m.sender_id, client_id: m.client_id, body: m.body, ts: m.ts });
    conv.lastSeq = Math.max(conv.lastSeq, m.seq);
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
        recountUnread(state, conv);
      } else if (!known && m.seq > wmOf(conv, me).read) {
        conv.unread += 1;
      }
      return conv;
    }
    case 'receipt': {
      const conv = ensureConv(state, e.conversation_id);
      raiseWm(conv, e.user_id, e.delivered, e.read);
      addWithheld(conv, e.withheld);
      if (e.user_id === me) recountUnread(state, conv);
      return conv;
    }
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
    default:
      return null; // kinds this client does not know: skipped, cursor still advances
  }
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
// later user seqs folded into it that will not arrive live; they are kept in
// `covered` and count as applied when their turn comes (protocol.md, "Sync
// algorithm").
export function advanceApplied(state, covered, e) {
  state.applied = e.user_seq;
  for (const seq of e.also_covers || []) if (seq > e.user_seq) covered.add(seq);
  while (covered.has(state.applied + 1)) {
    covered.delete(state.applied + 1);
    state.applied += 1;
  }
  for (const seq of covered) if (seq <= state.applied) covered.delete(seq);
}
