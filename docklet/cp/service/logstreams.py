"""Log streams: `GET /api/apps/{app}/logs`, relayed from the agents that run the containers.

`open` resolves what to show (the containers of the app's current placements, or
of `--revision`, filtered by slot and node), refuses what cannot be served (no such
app, no containers, every node offline, the caps), and rings each node over its
channel (channels.py) with the containers it should follow. The agents write their
batches up the channel (`take`, on the channels' thread), or an older agent POSTs them;
either way `post` puts them in the stream's buffer and wakes the caller's
generator with a Condition: no polling sleep between a line and its write.

Bounded every way: at most LOG_BUFFER_LINES lines and LOG_BUFFER_BYTES of text wait
for a slow caller (beyond, lines are dropped and counted, and the caller's next write
says "… N lines dropped" first); a stalled caller blocks a write at most the server's
socket timeout, then the stream closes. A stream holds a server thread, so at most
`log_stream_slots` are open (503 beyond) and `log_streams_per_node` on one node (429);
each ends after LOG_STREAM_MAX_TIME. Closing a stream (the caller left, or it ended)
gives its slot back once, rings `logs_stop` to its nodes, and answers their next
POST 410, so an agent stops following within a few seconds either way.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import ValidationError

from docklet.common import defaults
from docklet.common.errors import (
    AppNotFound,
    Forbidden,
    NoContainers,
    NodeBusy,
    NodeOffline,
    StreamClosed,
    TooManyStreams,
)
from docklet.common.status import ContainerState, NodeStatus
from docklet.cp.service.channels import Channels
from docklet.cp.service.liveness import Liveness
from docklet.cp.service.stream import Stream
from docklet.cp.settings import CPConfig
from docklet.cp.store import sources
from docklet.cp.store import views as stored
from docklet.cp.store.db import Store
from docklet.cp.store.nodes import effective_last_seen, last_seen, status_for
from docklet.wire.protocol import LogBatch, LogEnd, LogStop, problems

log = logging.getLogger(__name__)

RETRY_AFTER = 5  # seconds a caller refused a stream waits before asking again
GONE_CHECK = 0.5  # seconds between looks at whether a waiting stream's caller hung up
CALLER_LEFT = "the caller left"


class LogQuery(NamedTuple):
    """What a caller asked for (checked by the API: tail in range, since a time)."""

    tail: int = 100
    since: float | None = None  # epoch seconds
    follow: bool = False
    timestamps: bool = False
    slot: int | None = None
    node: str | None = None
    revision: int | None = None


@dataclass(frozen=True)
class Source:
    """One container a stream shows, and the label its lines carry (`web.2@node-b`)."""

    node_id: str
    name: str
    slot: int | None
    label: str

    @functools.cached_property
    def prefix(self) -> str:
        """Each of its lines' event up to the text, encoded once (a busy stream has many)."""
        head = json.dumps({"label": self.label, "slot": self.slot, "node": self.node_id})
        return f'data: {head[:-1]}, "text": '


@dataclass
class Relay:
    """One open stream: its buffer (bounded), what is still open of it, the caller's bell."""

    stream_id: str
    sources: list[Source]
    follow: bool
    cond: threading.Condition = field(default_factory=threading.Condition)
    items: deque[bytes] = field(default_factory=deque)  # frames waiting for the caller
    lines: int = 0  # lines among them
    first_at: float = 0.0  # when the oldest of them came (written LOG_WRITE_EVERY later)
    size: int = 0  # and their bytes
    dropped: int = 0  # lines dropped since the caller's last write
    held_most: int = 0  # the most lines ever waiting at once (what a test checks)
    open_labels: dict[str, set[str]] = field(default_factory=dict)  # node → labels not ended
    waiting: dict[str, float] = field(default_factory=dict)  # node → when it must have answered
    closed: bool = False
    asked: tuple[str, ...] = ()  # the nodes asked, in order: what the per-node count holds
    gone: Callable[[], bool] = bool  # whether its caller hung up (the server's word)

    def __post_init__(self) -> None:
        for s in self.sources:
            self.open_labels.setdefault(s.node_id, set()).add(s.label)
        self.asked = tuple(self.open_labels)

    def notice(self, message: str) -> None:
        """A notice for the caller (under `cond`): few, so never dropped."""
        data = json.dumps({"message": message})
        self.items.append(f"event: notice\ndata: {data}\n\n".encode())

    def add(self, node_id: str, batch: LogBatch) -> None:
        """A node's batch: its lines (within the buffer's bounds), its drops and ends."""
        known = {s.label: s for s in self.sources if s.node_id == node_id}
        with self.cond:
            had = bool(self.items or self.dropped)
            ends = sum(map(len, self.open_labels.values()))
            self.waiting.pop(node_id, None)
            for line in batch.lines:
                source = known.get(line.label)
                if source is not None:
                    self._line(source, line.text, line.time)
            if batch.dropped:
                self.notice(f"… {batch.dropped} lines dropped on {node_id} (it could not keep up)")
            for ended in batch.ended:
                if ended.label in known:
                    if ended.reason != LogEnd.DONE:  # all that was asked for was sent: no news
                        self.notice(f"{ended.label}: {ended.reason}")
                    self.open_labels.get(node_id, set()).discard(ended.label)
            if batch.error:
                self.notice(f"{node_id}: {batch.error}")
                self.open_labels.pop(node_id, None)
            if self._wakes(had, ends):
                self.cond.notify_all()

    def _wakes(self, had: bool, ends: int) -> bool:
        """Whether the caller's thread must look now (under `cond`): the first lines in a
        while, a buffer half full, or a container's end. Lines added to a buffer already
        waiting wake nobody: it is written at `first_at` + LOG_WRITE_EVERY anyway."""
        if (self.items or self.dropped) and not had:
            self.first_at = time.monotonic()
            return True
        return self._half_full() or ends != sum(map(len, self.open_labels.values()))

    def _half_full(self) -> bool:
        """Written now rather than at its time: lines coming fast must not be dropped."""
        return (
            self.lines >= defaults.LOG_BUFFER_LINES // 2
            or self.size >= defaults.LOG_BUFFER_BYTES // 2
        )

    def _line(self, source: Source, text: str, at: float | None) -> None:
        when = "null" if at is None else repr(float(at))  # finite: the batch's model says so
        encoded = f'{source.prefix}{json.dumps(text)}, "time": {when}}}\n\n'.encode()
        lines_full = self.lines >= defaults.LOG_BUFFER_LINES
        if lines_full or self.size + len(encoded) > defaults.LOG_BUFFER_BYTES:
            self.dropped += 1
            return
        self.items.append(encoded)
        self.lines += 1
        self.size += len(encoded)
        self.held_most = max(self.held_most, self.lines)

    def take(self, until: float) -> tuple[bytes, str | None]:
        """What to write to the caller as soon as there is some, or b"" at `until`; and why
        the stream ends, when it does. Whether the caller hung up is looked at every
        GONE_CHECK while waiting, so its slot and its agents are let go at once, not at the
        next write that fails."""
        with self.cond:
            while True:
                if self.closed:  # released meanwhile: its caller hung up
                    return b"", CALLER_LEFT
                self._late_nodes()
                ended = self._ended()
                now = time.monotonic()
                left = until - now
                if ended or left <= 0:
                    break
                deadlines = [d - now for d in self.waiting.values()]
                if self.items or self.dropped:
                    due = self.first_at + defaults.LOG_WRITE_EVERY - now
                    if due <= 0 or self._half_full():
                        break
                    deadlines.append(due)
                self.cond.wait(min([left, GONE_CHECK, *deadlines]))
                if self.gone():
                    return b"", CALLER_LEFT
            out = [] if not self.dropped else [_dropped(self.dropped)]
            out += self.items
            self.items.clear()
            self.lines = self.size = self.dropped = 0
        return b"".join(out), ended

    def _late_nodes(self) -> None:
        """A node that has not answered in time is a notice; without -f, its part ends."""
        now = time.monotonic()
        for node_id, deadline in list(self.waiting.items()):
            if now >= deadline:
                del self.waiting[node_id]
                wait = defaults.LOG_ANSWER_WAIT
                if self.follow:
                    self.notice(f"{node_id} did not answer within {wait:g}s; still waiting")
                else:
                    self.notice(f"{node_id} did not answer within {wait:g}s")
                    self.open_labels.pop(node_id, None)

    def _ended(self) -> str | None:
        if any(self.open_labels.values()):
            return None
        return "every container's lines ended" if not self.follow else "every container ended"


class LogStreams:
    """The open log streams, their slots, and the agents' batches."""

    def __init__(
        self, store: Store, config: CPConfig, liveness: Liveness, channels: Channels
    ) -> None:
        self.store, self.config = store, config
        self.liveness, self.channels = liveness, channels
        self.keepalive = defaults.LOG_KEEPALIVE
        self._lock = threading.Lock()
        self._open: dict[str, Relay] = {}
        self._per_node: Counter[str] = Counter()

    def open_now(self) -> int:
        with self._lock:
            return len(self._open)

    def relay(self, stream_id: str) -> Relay | None:
        with self._lock:
            return self._open.get(stream_id)

    def open(self, app: str, query: LogQuery, gone: Callable[[], bool] = bool) -> Stream:
        """A stream of the app's lines as `query` asks, or the error that says why not;
        `gone()` says whether the caller hung up (the server's word)."""
        found = self._sources(app, query)
        live, notices = self._reachable(found, query.node)
        relay = Relay(secrets.token_urlsafe(12), live, query.follow, gone=gone)
        self._take_slots(relay)
        for message in notices:
            relay.notice(message)
        self._ask(relay, query)
        ends = time.monotonic() + defaults.LOG_STREAM_MAX_TIME
        frames = self._frames(relay, app, ends)
        return Stream(frames, lambda: self._release(relay))

    # -- resolving what to show ------------------------------------------------------------

    def _sources(self, app: str, query: LogQuery) -> list[Source]:
        row = sources.app(self.store, app)
        if row is None:
            raise AppNotFound(f"app {app!r} does not exist (docklet ps lists apps)")
        if query.revision is not None:
            if not sources.revision_exists(self.store, app, query.revision):
                raise NoContainers(
                    f"app {app!r} has no revision v{query.revision} (docklet history lists them)"
                )
            rows = [
                c for c in sources.containers(self.store, app) if c["revision"] == query.revision
            ]
        else:
            rows = _placed(self.store, app, row["current_revision"])
        rows = [r for r in rows if _matches(r, query)]
        if not rows:
            raise NoContainers(_nothing(app, query))
        return _labelled(app, rows)

    def _reachable(self, found: list[Source], only: str | None) -> tuple[list[Source], list[str]]:
        """The sources on nodes not offline, and a notice per offline node; NodeOffline when
        none is left (or the one node asked for is offline)."""
        offline = self._offline({s.node_id for s in found})
        if not offline:
            return found, []
        if only is not None or len(offline) == len({s.node_id for s in found}):
            node_id, seen = sorted(offline.items())[0]
            raise NodeOffline(
                f"node {node_id} is offline (last seen {_ago(seen)}): its containers' logs"
                " cannot be read until its agent is back"
            )
        live = [s for s in found if s.node_id not in offline]
        notices = [
            f"node {n} is offline (last seen {_ago(seen)}): its containers are not shown"
            for n, seen in sorted(offline.items())
        ]
        return live, notices

    def _offline(self, node_ids: set[str]) -> dict[str, float]:
        """Of `node_ids`, those offline, with when each was last seen."""
        deaf, seen = self.liveness.deaf_until(), self.liveness.last_seen()
        now = time.time()
        offline = {}
        for r in stored.node_liveness(self.store):
            if r["node_id"] not in node_ids:
                continue
            age = now - effective_last_seen(r, deaf, seen)
            if status_for(age, self.config) == NodeStatus.OFFLINE:
                offline[r["node_id"]] = last_seen(r, seen)
        return offline

    # -- slots, asking, ending ------------------------------------------------------------------

    def _take_slots(self, relay: Relay) -> None:
        slots, per_node = self.config.log_stream_slots, self.config.log_streams_per_node
        self._sweep()
        with self._lock:
            if len(self._open) >= slots:
                raise TooManyStreams(
                    f"all {slots} log streams this control plane serves are open (--log-streams);"
                    f" retry in {RETRY_AFTER}s",
                    retry_after=RETRY_AFTER,
                )
            busy = sorted(n for n in relay.asked if self._per_node[n] >= per_node)
            if busy:
                raise NodeBusy(
                    f"node {busy[0]} already serves {per_node} log streams"
                    f" (--log-streams-per-node); retry in {RETRY_AFTER}s",
                    retry_after=RETRY_AFTER,
                )
            self._open[relay.stream_id] = relay
            self._per_node.update(relay.asked)

    def _ask(self, relay: Relay, query: LogQuery) -> None:
        """Ring each node with its containers; a node without a channel is asked through
        its next heartbeat's answer."""
        deadline = time.monotonic() + defaults.LOG_ANSWER_WAIT
        for node_id in relay.asked:
            request = {
                "type": "logs",
                "stream": relay.stream_id,
                "containers": [
                    {"name": s.name, "slot": s.slot, "label": s.label}
                    for s in relay.sources
                    if s.node_id == node_id
                ],
                "tail": query.tail,
                "since": query.since,
                "follow": query.follow,
                "timestamps": query.timestamps,
            }
            with relay.cond:
                relay.waiting[node_id] = deadline
            if not self.channels.ring(node_id, request):
                self.channels.hold(node_id, relay.stream_id, request)

    def _frames(self, relay: Relay, app: str, ends: float) -> Generator[bytes, None, None]:
        yield f": logs of {app}\n\n".encode()  # the answer starts now, not at the first line
        while True:
            now = time.monotonic()
            if now >= ends:
                yield _end("the stream's time is up; run it again to go on")
                return
            out, ended = relay.take(min(ends, now + self.keepalive))
            if ended == CALLER_LEFT:
                return  # nobody to tell
            yield out or b": keepalive\n\n"
            if ended:
                yield _end(ended)
                return

    def _sweep(self) -> None:
        """Let go of the streams whose callers hung up and that have not noticed yet (a
        `docklet logs -f` ended with Ctrl-C and run again at once must find its slot)."""
        with self._lock:
            relays = list(self._open.values())
        for relay in relays:
            if relay.gone():
                self._release(relay)

    def _release(self, relay: Relay) -> None:
        with self._lock:
            if self._open.pop(relay.stream_id, None) is None:
                return
            self._per_node.subtract(relay.asked)
            self._per_node += Counter()  # drops the zeros
        with relay.cond:
            relay.closed = True
            relay.cond.notify_all()  # its generator, if it waits, ends now
        self.channels.drop_held(relay.stream_id)
        for node_id in relay.asked:
            self.channels.ring(node_id, {"type": "logs_stop", "stream": relay.stream_id})

    # -- what agents send ------------------------------------------------------------------

    def post(self, node_id: str, stream_id: str, batch: LogBatch) -> dict[str, Any]:
        """A node's batch of lines for a stream: 410 once the stream is closed or unknown."""
        relay = self.relay(stream_id)
        if relay is None or relay.closed:
            raise StreamClosed(f"log stream {stream_id} is closed: stop following it")
        if node_id not in relay.asked:
            raise Forbidden(f"log stream {stream_id} does not ask node {node_id} for lines")
        relay.add(node_id, batch)
        return {"open": True}

    def take(self, node_id: str, message: dict[str, Any]) -> dict[str, Any] | None:
        """A frame an agent wrote up its (upgraded) channel, on the channels' thread: a batch
        goes where a POST's goes, with the same checks; a stream that is closed, or not this
        node's, answers `logs_stop` down the channel (what the POST's 410/403 say)."""
        if message.get("type") != "batch":
            return None  # a newer agent's frame this CP does not know
        fields = {k: v for k, v in message.items() if k not in ("type", "stream")}
        try:
            stop = LogStop(stream=message.get("stream"))
            batch = LogBatch.model_validate(fields)
        except ValidationError as exc:
            log.info("node %s: a log batch on its channel, refused: %s", node_id, problems(exc))
            return None
        try:
            self.post(node_id, stop.stream, batch)
        except (StreamClosed, Forbidden):
            return stop.model_dump()
        return None


def _placed(store: Store, app: str, current: int | None) -> list[dict[str, Any]]:
    """The containers of the app's current placements: each slot's container of the revision
    placed there (the app's current one when the placement names none), else its live ones."""
    by_place: dict[tuple[int | None, str], list[dict[str, Any]]] = {}
    for c in sources.containers(store, app):
        by_place.setdefault((c["slot"], c["node_id"]), []).append(c)
    out: list[dict[str, Any]] = []
    for p in sources.placements(store, app):
        here = by_place.get((p["slot"], p["node_id"]), [])
        wanted = p["revision"] if p["revision"] is not None else current
        chosen = [c for c in here if c["revision"] == wanted]
        out += chosen or [c for c in here if ContainerState.is_live(c["state"])]
    return out


def _matches(row: dict[str, Any], query: LogQuery) -> bool:
    if query.slot is not None and row["slot"] != query.slot:
        return False
    return query.node is None or row["node_id"] == query.node


def _labelled(app: str, rows: Iterable[dict[str, Any]]) -> list[Source]:
    """Each container with its label, `app.slot@node`; a second one of the same slot and
    node (a rollout's old and new) gets its name's end too."""
    out: list[Source] = []
    seen: set[str] = set()
    for r in rows:
        slot = f".{r['slot']}" if r["slot"] is not None else ""
        label = f"{app}{slot}@{r['node_id']}"
        if label in seen:
            label = f"{label}~{r['name'][-8:]}"
        seen.add(label)
        out.append(Source(r["node_id"], r["name"], r["slot"], label))
    return out


def _nothing(app: str, query: LogQuery) -> str:
    asked = [
        f"slot {query.slot}" if query.slot is not None else "",
        f"on node {query.node}" if query.node is not None else "",
        f"of revision v{query.revision}" if query.revision is not None else "",
    ]
    which = " ".join(a for a in asked if a)
    return f"app {app!r} has no containers{' ' + which if which else ''} (docklet ps shows them)"


def _ago(at: float) -> str:
    seconds = max(0, int(time.time() - at))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _dropped(count: int) -> bytes:
    data = json.dumps({"message": f"… {count} lines dropped (the reader was slow)"})
    return f"event: notice\ndata: {data}\n\n".encode()


def _end(reason: str) -> bytes:
    return f"event: end\ndata: {json.dumps({'reason': reason})}\n\n".encode()
