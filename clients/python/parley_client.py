"""A small asyncio client for the Parley messaging server (protocol version 1).

Written from docs/protocol.md alone, as an independent second client (an
interoperability check of the document and of parleyd).  It needs only the
standard library and the `websockets` package (tested with 10.4, Debian's
python3-websockets).

Two layers:

* `Connection`: one WebSocket connection.  Sends request frames, matches
  answers to requests by `id`, raises `ParleyError` for error frames, and puts
  every live event object into `Connection.events` (an asyncio.Queue), with
  `head` notices in line as {"head": N}.
* `Client`: a device session on top of a Connection.  Implements the client
  sync algorithm of the document (an `applied` cursor, duplicate live events
  dropped by `user_seq`, a gap triggers a `sync` loop), keeps a small local
  store (conversations, messages, per-user watermarks), computes ticks and
  keeps each conversation's unread count exact (`Client.unread`).
"""

import asyncio
import itertools
import json
import random

import websockets

PROTOCOL_VERSION = 1
DEFAULT_TIMEOUT = 10.0
# `history` pages (docs/protocol.md "history": limit 1-200).
MAX_HISTORY_PAGE = 200
# Opening a summarised conversation pages its history until every unread
# message is held, at most this many pages (10,000 messages, as the C++ SDK);
# past it the older unread ones are kept as a count.
MAX_FILL_PAGES = 50

# Close codes (docs/protocol.md, "Close codes").
CLOSE_SERVER_SHUTDOWN = 4001
CLOSE_DEVICE_REVOKED = 4002
CLOSE_RESYNC = 4003
CLOSE_HEARTBEAT_TIMEOUT = 4004


class ParleyError(Exception):
    """An error frame from the server, or a client-side failure of a request.

    `code` is the protocol error code (e.g. "not_member"), or one of the
    client-side codes "timeout" and "connection_closed".
    """

    def __init__(self, code, message="", *, retryable=False, retry_after_ms=None,
                 op=None, request_id=None, frame=None):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms
        self.op = op
        self.request_id = request_id
        self.frame = frame


class RequestTimeout(ParleyError):
    def __init__(self, op, request_id, timeout):
        super().__init__("timeout", f"no answer to {op!r} (id {request_id!r}) within {timeout} s",
                         retryable=True, op=op, request_id=request_id)


class ConnectionClosed(ParleyError):
    """The connection closed.  `close_code`/`close_reason` come from the close
    frame (None if there was none); `retry_after_ms` is parsed from a JSON
    close reason when present."""

    def __init__(self, close_code=None, close_reason=None, op=None, request_id=None):
        retry_after_ms = None
        if close_reason:
            try:
                parsed = json.loads(close_reason)
                if isinstance(parsed, dict) and isinstance(parsed.get("retry_after_ms"), int):
                    retry_after_ms = parsed["retry_after_ms"]
            except ValueError:
                pass
        retryable = close_code != CLOSE_DEVICE_REVOKED
        super().__init__("connection_closed", f"close code {close_code}, reason {close_reason!r}",
                         retryable=retryable, retry_after_ms=retry_after_ms,
                         op=op, request_id=request_id)
        self.close_code = close_code
        self.close_reason = close_reason


def new_client_id():
    """A fresh `client_id` for `send` (1-64 of A-Z a-z 0-9 - _)."""
    return "py-" + "".join(random.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(20))


class Connection:
    """One WebSocket connection to parleyd with request/response matching."""

    def __init__(self, ws, *, default_timeout=DEFAULT_TIMEOUT):
        self.ws = ws
        self.default_timeout = default_timeout
        self.events = asyncio.Queue()          # live event objects, as received
        self.unmatched_errors = asyncio.Queue()  # error frames with no (known) id
        self._pending = {}                     # id -> (future, op)
        self._ids = itertools.count(1)
        self._closed = None                    # ConnectionClosed once closed
        self.closed_future = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(cls, url, *, open_timeout=DEFAULT_TIMEOUT, default_timeout=DEFAULT_TIMEOUT, ssl=None):
        # `url` is ws://... or wss://... (a server run with --tls-cert); for
        # wss, `ssl` is an ssl.SSLContext (e.g. one trusting a private CA),
        # default: the system's CAs.
        # Server frames can be large (a sync page of 1000 events); no limit here.
        extra = {} if ssl is None else {"ssl": ssl}
        ws = await websockets.connect(url, open_timeout=open_timeout, max_size=None,
                                      ping_interval=None, compression=None, **extra)
        return cls(ws, default_timeout=default_timeout)

    @property
    def closed(self):
        return self._closed is not None

    async def close(self):
        await self.ws.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        except (asyncio.TimeoutError, Exception):
            pass

    async def _read_loop(self):
        try:
            async for raw in self.ws:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    continue  # not for us to crash on; the server never sends this
                if not isinstance(frame, dict):
                    continue
                self._dispatch(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._closed = ConnectionClosed(self.ws.close_code, self.ws.close_reason)
            for rid, (fut, op) in list(self._pending.items()):
                if not fut.done():
                    fut.set_exception(ConnectionClosed(self.ws.close_code, self.ws.close_reason,
                                                       op=op, request_id=rid))
            self._pending.clear()
            if not self.closed_future.done():
                self.closed_future.set_result(self._closed)

    def _dispatch(self, frame):
        kind = frame.get("type")
        if kind == "event":
            event = frame.get("event")
            if isinstance(event, dict):
                self.events.put_nowait(event)
            return
        if kind == "head":
            # A head notice (the server was cut off from its other nodes:
            # live events may have been lost) comes in line with the events,
            # as {"head": N} without a user_seq.
            if isinstance(frame.get("head"), int):
                self.events.put_nowait({"head": frame["head"]})
            return
        if kind not in ("response", "error"):
            return  # unknown frame kind: ignore
        rid = frame.get("id")
        entry = self._pending.pop(rid, None) if rid is not None else None
        if entry is None:
            if kind == "error":
                self.unmatched_errors.put_nowait(frame)
            return
        fut, op = entry
        if fut.done():
            return
        if kind == "response":
            result = frame.get("result")
            fut.set_result(result if isinstance(result, dict) else {})
        else:
            fut.set_exception(ParleyError(
                frame.get("code", "unknown"), frame.get("message", ""),
                retryable=bool(frame.get("retryable", False)),
                retry_after_ms=frame.get("retry_after_ms"),
                op=frame.get("op", op), request_id=rid, frame=frame))

    async def request(self, type_, *, timeout=None, **fields):
        """Send one request and return its `result` object; raise ParleyError
        for an error frame, RequestTimeout, or ConnectionClosed."""
        if self._closed is not None:
            raise ConnectionClosed(self._closed.close_code, self._closed.close_reason, op=type_)
        rid = f"py-{next(self._ids)}"
        frame = {"v": PROTOCOL_VERSION, "id": rid, "type": type_}
        frame.update({k: v for k, v in fields.items() if v is not None})
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, type_)
        try:
            await self.ws.send(json.dumps(frame, ensure_ascii=False))
        except websockets.ConnectionClosed:
            self._pending.pop(rid, None)
            raise ConnectionClosed(self.ws.close_code, self.ws.close_reason, op=type_, request_id=rid)
        timeout = self.default_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            self._pending.pop(rid, None)
            raise RequestTimeout(type_, rid, timeout) from None

    # -- one helper per request type (thin; results are the raw `result` dicts)

    async def register(self, username, password, **kw):
        return await self.request("register", username=username, password=password, **kw)

    async def login(self, username, password, device_name=None, platform=None, **kw):
        return await self.request("login", username=username, password=password,
                                  device_name=device_name, platform=platform, **kw)

    async def auth(self, token, **kw):
        return await self.request("auth", token=token, **kw)

    async def ping(self, **kw):
        return await self.request("ping", **kw)

    async def logout(self, **kw):
        return await self.request("logout", **kw)

    async def list_devices(self, **kw):
        return (await self.request("list_devices", **kw))["devices"]

    async def unlink_device(self, device_id, **kw):
        return await self.request("unlink_device", device_id=device_id, **kw)

    async def open_conversation(self, username, **kw):
        return await self.request("open_conversation", username=username, **kw)

    async def send(self, body, *, conversation_id=None, to=None, client_id=None, **kw):
        if (conversation_id is None) == (to is None):
            raise ValueError("give exactly one of conversation_id and to")
        return await self.request("send", conversation_id=conversation_id, to=to,
                                  client_id=client_id or new_client_id(), body=body, **kw)

    async def receipt(self, items, **kw):
        """items: [{"conversation_id": c, "delivered": n, "read": m}, ...]"""
        return await self.request("receipt", items=list(items), **kw)

    async def sync(self, after=None, limit=None, **kw):
        return await self.request("sync", after=after, limit=limit, **kw)

    async def ack(self, user_seq, **kw):
        return await self.request("ack", user_seq=user_seq, **kw)

    async def history(self, conversation_id, before=None, limit=None, **kw):
        return await self.request("history", conversation_id=conversation_id,
                                  before=before, limit=limit, **kw)

    async def edit_message(self, conversation_id, seq, body, *, client_id=None, **kw):
        return await self.request("edit_message", conversation_id=conversation_id, seq=seq,
                                  client_id=client_id or new_client_id(), body=body, **kw)

    async def delete_message(self, conversation_id, seq, *, for_="everyone", **kw):
        return await self.request("delete_message", conversation_id=conversation_id, seq=seq,
                                  **{"for": for_}, **kw)

    async def snapshot(self, messages=None, **kw):
        return await self.request("snapshot", messages=messages, **kw)

    async def select_sync(self, *, recent=None, conversations=None, add=None, all_=None, **kw):
        """Selective sync for this connection (protocol.md "select_sync"):
        `recent` and/or `conversations`, or `add`, or `all_=True`."""
        fields = {"recent": recent, "conversations": conversations, "add": add, "all": all_}
        return await self.request("select_sync", **{k: v for k, v in fields.items() if v is not None}, **kw)


class Client:
    """A device session: a Connection plus the client sync algorithm.

    Applied events (in user_seq order, each exactly once) are appended to
    `self.log` as (source, event) with source "live", "sync"; waiters can use
    `wait_event(predicate)`.  The local store is `conversations`,
    `messages[conversation_id][seq]` and `watermarks[(conversation_id, user_id)]`.

    Unread counts (`unread(conversation_id)`, `unread_counts()`) follow the
    C++ SDK (clients/sdk/src/local_cache.cc).  A conversation's count is
    either the server's, from its newest `summary`, kept current by the full
    events after it (`_summary_unread`), or else the messages held that are
    not mine, above my read watermark, plus the ones a snapshot (or an
    incomplete `open`) counted but did not send (`_hidden_unread`).
    """

    def __init__(self, conn, *, auto_ack=True, heartbeat=True, select=None, snapshot_messages=None):
        self.conn = conn
        self.select = select        # select_sync fields sent before each catch-up (None: full sync)
        self.snapshot_messages = snapshot_messages  # per conversation in the login snapshot (None: server default)
        self.summaries = {}         # conversation_id -> newest summary's {"last_seq", "unread"}, as sent
        self.selected = None        # this connection's selection (set of ids); None: everything in full
        self._covered = set()       # user seqs a summary or a merged receipt stands for, above applied
        # Unread counts (see the class comment).  _summary_unread: the
        # server's count, kept current; absent: the messages held count.
        # _summarised: 1 while messages up to last_seq may be missing (summaries
        # came instead of them), 2 once `open` paged them.  _selected_head:
        # the select_sync `head` when the conversation was selected; a summary
        # at or below it was made before and may arrive after the pages.
        # _hidden_unread: (count, below): unread messages below seq `below`
        # that are not held, until the read watermark passes them.
        self._summary_unread = {}
        self._summarised = {}
        self._selected_head = {}
        self._hidden_unread = {}
        self.auto_ack = auto_ack
        self.heartbeat = heartbeat
        self.session = None         # the login/auth result
        self.token = None
        self.user_id = None
        self.device_id = None
        self.applied = None         # highest user_seq applied; None until tracking starts
        self.conversations = {}
        self.messages = {}
        self.hidden = set()       # (conversation_id, seq) deleted for me
        self.watermarks = {}
        self.sent = {}              # (conversation_id, seq) -> client_id, for ticks
        self.log = []
        self.gaps = 0               # how many times a live gap triggered a sync
        self._changed = asyncio.Condition()
        self._sync_lock = asyncio.Lock()
        self._kept = {}             # user_seq -> event kept aside during a gap
        self._tasks = []
        self.background_errors = []

    @classmethod
    async def connect(cls, url, *, ssl=None, **kw):
        conn = await Connection.connect(url, ssl=ssl)
        return cls(conn, **kw)

    async def close(self):
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except BaseException:
                pass
        await self.conn.close()

    # -- session

    async def register(self, username, password):
        return await self.conn.register(username, password)

    async def login(self, username, password, device_name=None, platform=None):
        """Log in as a new device: login, then snapshot, then follow the stream
        from the snapshot's head (as the document says a new device does)."""
        res = await self.conn.login(username, password, device_name, platform)
        self.token = res.get("token")
        await self._start(res, applied=None)
        return res

    async def auth(self, token, applied=None):
        """Authenticate as an existing device.  `applied` is the locally
        persisted cursor; without it the device starts from a snapshot."""
        res = await self.conn.auth(token)
        self.token = token
        await self._start(res, applied=applied)
        return res

    async def _start(self, res, applied):
        self.session = res
        self.user_id = res["user_id"]
        self.device_id = res["device_id"]
        if applied is None:
            snap = await self.conn.snapshot(messages=self.snapshot_messages)
            self._apply_snapshot(snap)
            self.applied = snap["head"]
        else:
            self.applied = applied
        if self.select is not None:
            await self.select_sync(**self.select)
        await self.catch_up()
        # Selected conversations still summarised (a `recent` selection that
        # now takes in ones summaries stood for): their counts come from
        # complete messages, as for an opened one.
        for cid in [c for c, s in self._summarised.items() if s == 1 and self._is_selected(c)]:
            await self._fill(cid)
        self._tasks.append(asyncio.create_task(self._live_loop()))
        if self.heartbeat:
            interval = res.get("heartbeat_interval_ms", 25000) / 1000.0
            self._tasks.append(asyncio.create_task(self._heartbeat_loop(interval)))

    async def logout(self):
        return await self.conn.logout()

    # -- requests passed through

    def __getattr__(self, name):
        # ping, list_devices, unlink_device, open_conversation, receipt,
        # history, snapshot, ack and raw sync go straight to the Connection.
        if name in ("ping", "list_devices", "unlink_device", "open_conversation",
                    "receipt", "history", "snapshot", "ack", "sync", "edit_message", "delete_message"):
            return getattr(self.conn, name)
        raise AttributeError(name)

    async def select_sync(self, **fields):
        """`Connection.select_sync`, remembering the selection and, for each
        selected conversation, the `head` it took effect at (see `_apply`,
        summaries)."""
        res = await self.conn.select_sync(**fields)
        head = res.get("head", 0)
        if res.get("selective"):
            self.selected = set(res.get("conversations", []))
            for cid in self.selected:
                self._selected_head[cid] = max(self._selected_head.get(cid, 0), head)
        else:
            self.selected = None
        return res

    def _is_selected(self, cid):
        return self.selected is None or cid in self.selected

    async def open(self, conversation_id):
        """The user opens a conversation: on a selective connection, `add` it
        to the selection if needed; if summaries stood for its messages, page
        its history from the newest until every unread message is held
        (protocol.md, "Sync algorithm for clients"), after which its unread
        count comes from the messages held.  Returns its held messages,
        ascending."""
        if not self._is_selected(conversation_id):
            await self.select_sync(add=[conversation_id])
        if self._summarised.get(conversation_id) == 1:
            await self._fill(conversation_id)
        return [m for _, m in sorted(self.messages.get(conversation_id, {}).items())]

    async def _fill(self, cid):
        """Pages `cid`'s history (as the C++ SDK's Fill): from the newest until
        the pages join the messages held or reach my read watermark, or the
        first message, at most MAX_FILL_PAGES."""
        before, oldest, held = None, 0, False
        for _ in range(MAX_FILL_PAGES):
            page = await self.conn.history(cid, before=before, limit=MAX_HISTORY_PAGE)
            msgs = page.get("messages", [])
            held_before = set(self.messages.get(cid, {}))
            for m in msgs:
                self._store_message(m)
            if not msgs or not page.get("has_more"):
                held = True                       # the first message reached
                if msgs:
                    oldest = msgs[0]["seq"]
                break
            before = oldest = msgs[0]["seq"]
            below = [s for s in held_before if s < oldest]
            if oldest <= (max(below) if below else 0) + 1 or oldest <= self._my_read(cid) + 1:
                held = True
                break
        # Stopped before every unread message was held: the older ones are
        # kept as a number below the pages; the held ones count one by one.
        if not held and cid in self._summary_unread:
            self._hidden_unread[cid] = (max(0, self._summary_unread[cid] - self._held_unread(cid, oldest - 1)),
                                        oldest)
        self._summarised[cid] = 2
        self._summary_unread.pop(cid, None)

    async def send(self, body, *, conversation_id=None, to=None, client_id=None):
        client_id = client_id or new_client_id()
        res = await self.conn.send(body, conversation_id=conversation_id, to=to, client_id=client_id)
        self.sent[(res["conversation_id"], res["seq"])] = client_id
        return res

    # -- sync algorithm

    async def catch_up(self):
        """Step 1: loop `sync` after `applied` until has_more is false."""
        async with self._sync_lock:
            while True:
                page = await self.conn.sync(after=self.applied)
                for ev in page.get("events", []):
                    await self._apply(ev, "sync")
                if not page.get("has_more"):
                    break
                if page.get("next", self.applied) <= self.applied and not page.get("events"):
                    break  # defensive: no progress
            # Apply kept live events that are now next in line.
            while self.applied + 1 in self._kept:
                await self._apply(self._kept.pop(self.applied + 1), "live")
            for s in [s for s in self._kept if s <= self.applied]:
                del self._kept[s]
            if self.auto_ack and self.applied > 0:
                await self.conn.ack(self.applied)

    async def _catch_up_to(self, head):
        """Step 4: a ping answer's or a head notice's `head` past applied."""
        if head > self.applied:
            await self.catch_up()

    async def _live_loop(self):
        try:
            while True:
                ev = await self.conn.events.get()
                seq = ev.get("user_seq")
                if not isinstance(seq, int):
                    await self._catch_up_to(ev.get("head", 0))   # a head notice
                    continue
                if seq <= self.applied:
                    continue                       # duplicate: already applied
                if seq == self.applied + 1 and not self._sync_lock.locked():
                    await self._apply(ev, "live")
                    continue
                self._kept[seq] = ev               # gap (or a sync running): keep aside
                if seq > self.applied + 1:
                    self.gaps += 1
                await self.catch_up()
        except asyncio.CancelledError:
            raise
        except ParleyError as e:
            self.background_errors.append(e)

    async def _heartbeat_loop(self, interval):
        try:
            while True:
                await asyncio.sleep(interval)
                res = await self.conn.ping()
                await self._catch_up_to(res.get("head", 0))
        except asyncio.CancelledError:
            raise
        except ParleyError as e:
            self.background_errors.append(e)

    async def _apply(self, ev, source):
        seq = ev["user_seq"]
        if seq <= self.applied:
            return
        if seq in self._covered:
            # Accounted for already (an earlier receipt's also_covers, a
            # summary's covers): a copy, e.g. from a sync after a drop, is not
            # applied twice; the cursor passes it.
            self._covered.discard(seq)
            await self._advance(seq)
            return
        kind = ev.get("kind")
        if kind == "conversation":
            conv = dict(ev["conversation"])  # a copy: the store mutates it
            self.conversations[conv["conversation_id"]] = conv
        elif kind == "message":
            msg = ev["message"]
            cid = msg["conversation_id"]
            if cid in self._summary_unread:
                # After a summary the server's count goes on: one more from
                # the peer; none after my own send (sending reads everything
                # before it).
                mine = msg["sender_id"] == self.user_id
                self._summary_unread[cid] = 0 if mine else self._summary_unread[cid] + 1
            self._store_message(msg)
        elif kind == "receipt":
            cid = ev["conversation_id"]
            if ev["user_id"] == self.user_id and cid in self._summary_unread:
                # My read watermark is known again: read to the end, nothing
                # is unread; else the messages held count from here on (as
                # the C++ SDK: a summary's count says nothing of which seqs
                # are unread).
                if ev.get("read", 0) >= self._last_seq(cid):
                    self._summary_unread[cid] = 0
                else:
                    del self._summary_unread[cid]
            self._raise_watermarks(cid, ev["user_id"], ev.get("delivered", 0), ev.get("read", 0))
            # Receipts the server merged into this one (newest watermarks
            # win): their user seqs count as applied (protocol.md, "also_covers").
            self._covered.update(s for s in ev.get("also_covers", []) if s > seq)
        elif kind in ("edit", "delete"):
            self._change_message(ev["conversation_id"], ev["seq"], kind == "delete",
                                 ev.get("version", 0), ev.get("body", ""))
        elif kind == "delete_for_me":
            cid, mseq = ev["conversation_id"], ev["seq"]
            msg = self.messages.get(cid, {}).pop(mseq, None)
            if (msg is not None and msg["sender_id"] != self.user_id and self._summary_unread.get(cid, 0) > 0
                    and mseq > self._my_read(cid)):
                # While the server's count stands, an unread message deleted
                # for me leaves it (the server's count never includes those).
                self._summary_unread[cid] -= 1
            self.hidden.add((cid, mseq))
        elif kind == "summary":
            # Selective sync: the conversation's current state in place of its
            # events; every user seq of `covers` counts as applied.
            cid = ev["conversation_id"]
            self.summaries[cid] = {"last_seq": ev["last_seq"], "unread": ev["unread"]}
            # The newest summary's count replaces ours.  One made before the
            # conversation was selected (at or below _selected_head) that
            # arrives after `open` paged it changes no count: the messages
            # held are complete then, and its count, read later than its place
            # in the stream, may include messages that arrive in full after it.
            if seq > self._selected_head.get(cid, 0) or self._summarised.get(cid, 0) == 1:
                self._summary_unread[cid] = ev["unread"]
            if seq > self._selected_head.get(cid, 0):
                self._summarised[cid] = 1
            for lo, hi in ev.get("covers", []):
                self._covered.update(range(max(lo, seq + 1), hi + 1))
        # unknown kinds: ignored, but the cursor still advances
        self.log.append((source, ev))
        await self._advance(seq)

    async def _advance(self, seq):
        """`seq` is applied: so is every covered user seq right after it."""
        self.applied = seq
        while self.applied + 1 in self._covered:
            self._covered.discard(self.applied + 1)
            self.applied += 1
        async with self._changed:
            self._changed.notify_all()

    def _change_message(self, cid, seq, deleted, version, body):
        """protocol.md "Edits and deletes": a delete is final; otherwise the
        highest version wins, whatever order things arrive in."""
        msg = self.messages.get(cid, {}).get(seq)
        if msg is None:
            return                               # not here: history brings its state
        if msg.get("deleted"):
            return
        if deleted:
            msg.update(body="", deleted=True, version=max(version, msg.get("version", 0)))
        elif version > msg.get("version", 0):
            msg.update(body=body, version=version)

    def _store_message(self, msg):
        cid = msg["conversation_id"]
        if (cid, msg["seq"]) in self.hidden:
            return                               # deleted for me
        old = self.messages.get(cid, {}).get(msg["seq"])
        if old is not None:
            # Known already: fold the newer state in (an edit, a tombstone).
            self._change_message(cid, msg["seq"], msg.get("deleted", False),
                                 msg.get("version", 0), msg.get("body", ""))
            msg = old
        self.messages.setdefault(cid, {})[msg["seq"]] = msg
        conv = self.conversations.get(cid)
        if conv is not None and msg["seq"] > conv.get("last_seq", 0):
            conv["last_seq"] = msg["seq"]
        # "A message event also means: the sender's own delivered and read
        # watermarks are now at least seq."
        self._raise_watermarks(cid, msg["sender_id"], msg["seq"], msg["seq"])

    def _raise_watermarks(self, cid, user_id, delivered, read):
        cur = self.watermarks.setdefault((cid, user_id), {"delivered": 0, "read": 0})
        cur["delivered"] = max(cur["delivered"], delivered or 0, read or 0)
        cur["read"] = max(cur["read"], read or 0)

    def _apply_snapshot(self, snap):
        # A snapshot replaces all stream-derived state (protocol.md, sync).
        for state in (self.conversations, self.messages, self.watermarks, self.summaries,
                      self._summary_unread, self._summarised, self._hidden_unread):
            state.clear()
        self.hidden.clear()
        self._covered.clear()
        for item in snap.get("conversations", []):
            conv = dict(item["conversation"])
            cid = conv["conversation_id"]
            self.conversations[cid] = conv
            for wm in item.get("watermarks", []):
                self._raise_watermarks(cid, wm["user_id"], wm.get("delivered", 0), wm.get("read", 0))
            for msg in item.get("messages", []):
                self._store_message(msg)
            # The snapshot's count can cover messages older than the ones it
            # sent: those are kept as a number standing for the unread
            # messages below the oldest one held (or last_seq + 1 if none).
            held = self.messages.get(cid, {})
            below = min(held) if held else conv.get("last_seq", 0) + 1
            hidden = max(0, item.get("unread", 0) - self._held_unread(cid, 0))
            if hidden:
                self._hidden_unread[cid] = (hidden, below)

    # -- unread counts

    def _my_read(self, cid):
        return self.watermarks.get((cid, self.user_id), {}).get("read", 0)

    def _last_seq(self, cid):
        held = self.messages.get(cid, {})
        return max(self.conversations.get(cid, {}).get("last_seq", 0),
                   self.summaries.get(cid, {}).get("last_seq", 0), max(held) if held else 0)

    def _held_unread(self, cid, floor):
        """Messages held in `cid` not sent by me, above my read watermark and `floor`."""
        low = max(floor, self._my_read(cid))
        return sum(1 for s, m in self.messages.get(cid, {}).items()
                   if s > low and m["sender_id"] != self.user_id)

    def unread(self, conversation_id):
        """This user's unread count in a conversation, as list_conversations
        defines it: messages visible to me, not sent by me, above my read
        watermark (deleted-for-me and withheld ones never count)."""
        cid = conversation_id
        if cid in self._summary_unread:
            return self._summary_unread[cid]   # the server's count, kept current
        my_read = self._my_read(cid)
        hidden, below = self._hidden_unread.get(cid, (0, 0))
        if hidden > 0 and my_read < below - 1:
            # While the read watermark is below the unread messages not held,
            # they count (at most one per seq left between the watermark and
            # `below`), and the held ones from `below` up.
            return self._held_unread(cid, below - 1) + min(hidden, below - 1 - my_read)
        return self._held_unread(cid, 0)

    def unread_counts(self):
        """{conversation_id: unread count} for every conversation known."""
        return {cid: self.unread(cid) for cid in sorted(set(self.conversations) | set(self.summaries))}

    # -- queries

    def tick(self, conversation_id, seq):
        """Tick of a message this user sent: "sent", "delivered" or "read"
        (1:1 conversations: the other member's watermarks decide)."""
        conv = self.conversations.get(conversation_id)
        others = [m["user_id"] for m in (conv or {}).get("members", []) if m["user_id"] != self.user_id]
        wms = [self.watermarks.get((conversation_id, u), {"delivered": 0, "read": 0}) for u in others]
        if wms and all(w["read"] >= seq for w in wms):
            return "read"
        if wms and all(w["delivered"] >= seq for w in wms):
            return "delivered"
        return "sent"

    async def wait_event(self, predicate, timeout=DEFAULT_TIMEOUT):
        """Wait until an applied event (source, event) satisfies predicate;
        return that pair.  Looks at events applied before the call too."""
        async def scan():
            async with self._changed:
                while True:
                    for pair in self.log:
                        if predicate(*pair):
                            return pair
                    await self._changed.wait()
        return await asyncio.wait_for(scan(), timeout)
