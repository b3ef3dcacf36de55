"""The service benchmark's load generator: closed-loop HTTP/1.1 POSTs over raw asyncio sockets.

``clients`` keep-alive connections each send a request, wait for the whole response, and send
the next, until ``n`` responses are in (closed loop: the server's speed sets the pace, and a
slow server is never buried under a queue it could not have taken). The requests are built
before the clock starts, with a unique conversation id each; the hot path only writes bytes,
finds the end of the headers, reads the status code and ``content-length``, and notes the
time. An ``asyncio.Protocol`` per connection does this inside ``data_received``, with no task
switch per request, so the generator stays cheap on a machine whose two cores it shares with
the server: it reports its own CPU time so a run can show it.

The server's CPU time (user + system, children included) is read with psutil right before
the first POST and right after the last response. For a service with a ``/v1/stats`` route,
the generator then polls it every ``POLL_S`` until nothing is pending: the completions
finished over that quiet period are the jobs' own drain rate, with no HTTP traffic besides
the polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed; cpu_times() only

from ._harness import Result, percentile

HOST = "127.0.0.1"
PATH = "/v1/conversations/completed"
#: How often the drain is sampled: often enough for a backlog of seconds, cheap for the server.
POLL_S = 0.2
#: Users the conversations are spread over, round-robin.
USERS = 50
#: A whole response must arrive within this, or the run has hung.
STALL_S = 120.0


def bodies(n: int, prefix: str) -> list[bytes]:
    """``n`` realistic completed conversations (the demo's generator), ids ``{prefix}-{i}``."""
    import random
    from datetime import UTC, datetime

    from afterwork.conversations import ConversationCompleted
    from afterwork.conversations._demo_data import conversation

    rng = random.Random(12)
    start = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    out = []
    for i in range(n):
        made = conversation(rng, i, f"user-{i % USERS:02d}", start)
        made = made.model_copy(update={"id": f"{prefix}-{i:06d}"})
        out.append(ConversationCompleted(conversation=made).model_dump_json().encode())
    return out


def post(port: int, body: bytes) -> bytes:
    """One whole request: headers written out by hand, the body appended."""
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def parse_head(head: bytes) -> tuple[int, int]:
    """The status code and content length of a response's header block (no final CRLFs)."""
    lines = head.split(b"\r\n")
    status = int(lines[0][9:12])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, length


class Connection(asyncio.Protocol):
    """One keep-alive client: one request in flight at a time, the response parsed in place."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.buffer = bytearray()
        self.needed = 0  # the whole response's size once its headers are in, else 0
        self.status = 0
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.needed:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status, length = parse_head(bytes(self.buffer[:end]))
            self.needed = end + 4 + length
        if len(self.buffer) < self.needed:
            return
        del self.buffer[: self.needed]
        self.needed = 0
        self.load.answered(self, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.load.lost(self, exc)


@dataclass
class Load:
    """The requests of one closed-loop phase and what came back."""

    requests: Sequence[bytes]
    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    done: asyncio.Future[None] | None = None
    last_at: float = 0.0

    def next(self, connection: Connection) -> None:
        if self.sent < len(self.requests):
            self.sent += 1
            connection.send(self.requests[self.sent - 1])

    def answered(self, connection: Connection, status: int) -> None:
        now = time.perf_counter()
        self.latencies.append(now - connection.sent_at)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if len(self.latencies) == len(self.requests):
            self.last_at = now
            assert self.done is not None
            if not self.done.done():
                self.done.set_result(None)
        else:
            self.next(connection)

    def lost(self, connection: Connection, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            answered = len(self.latencies)
            self.done.set_exception(
                ConnectionError(
                    f"the server closed a connection after {answered} of "
                    f"{len(self.requests)} responses ({exc!r})"
                )
            )


class Clients:
    """``count`` keep-alive connections to the server, opened afresh for each phase."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.connections: list[Connection] = []

    async def _connect(self, load: Load) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: Connection(load), HOST, self.port)
        return protocol

    async def run(self, load: Load) -> float:
        """Send every request of ``load``; return when the first was sent.

        Each phase opens fresh connections: the server may close one left idle between
        phases (uvicorn's keep-alive timeout), and one closed just as a request goes out
        would fail the run.
        """
        await self.close()
        load.done = asyncio.get_running_loop().create_future()
        self.connections = [await self._connect(load) for _ in range(self.count)]
        started = time.perf_counter()
        for connection in self.connections:
            load.next(connection)
        await asyncio.wait_for(load.done, STALL_S + len(load.requests) / 10)
        return started

    async def close(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()
        await asyncio.gather(*(c.closed for c in self.connections))


async def get_json(port: int, path: str) -> tuple[int, Any]:
    """One GET on a connection of its own (not on the hot path): status and parsed body."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status, length = parse_head(head[:-4])
        body = await reader.readexactly(length)
    finally:
        writer.close()
        await writer.wait_closed()
    return status, json.loads(body) if body else None


class Stats:
    """``GET /v1/stats`` on one keep-alive connection, for polling the drain cheaply."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.request = f"GET /v1/stats HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self) -> dict[str, Any]:
        try:
            status, body = await self._get()
        except (ConnectionError, asyncio.IncompleteReadError):  # closed while idle
            await self.close()
            status, body = await self._get()
        if status != 200:
            raise RuntimeError(f"GET /v1/stats answered {status}: {body[:200]!r}")
        stats: dict[str, Any] = json.loads(body)
        return stats

    async def _get(self) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(HOST, self.port)
        reader, writer = self.streams
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status, length = parse_head(head[:-4])
        return status, await reader.readexactly(length)

    async def close(self) -> None:
        if self.streams is not None:
            writer, self.streams = self.streams[1], None
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def wait_ready(port: int, limit_s: float = 60.0) -> None:
    """Wait until ``GET /readyz`` answers 200."""
    deadline = time.monotonic() + limit_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = await get_json(port, "/readyz")
            if status == 200:
                return
            last = (status, body)
        except (OSError, asyncio.IncompleteReadError) as error:
            last = error
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the server on port {port} was not ready within {limit_s:g} s: {last!r}")


async def wait_idle(stats: Stats, limit_s: float) -> list[tuple[float, int, int]]:
    """Poll the stats every ``POLL_S`` until nothing is pending; the (time, completed,
    pending) samples, the first taken at once."""
    deadline = time.perf_counter() + limit_s
    samples = []
    while True:
        got = await stats.get()
        samples.append((time.perf_counter(), int(got["completed"]), int(got["pending"])))
        if got["pending"] == 0:
            return samples
        if time.perf_counter() > deadline:
            raise TimeoutError(f"still {got['pending']} pending after {limit_s:g} s of drain")
        await asyncio.sleep(POLL_S)


def cpu_s(process: psutil.Process) -> float:
    """The process's CPU time so far, user and system, its children's included."""
    times = process.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


async def drive(
    port: int, server_pid: int, n: int, clients: int, *, warmup: int, stats: bool
) -> Result:
    """Warm up, POST ``n`` conversations closed-loop, then (with ``stats``) time the drain."""
    server = psutil.Process(server_pid)
    requests = [post(port, body) for body in bodies(n, "conv")]
    warm = [post(port, body) for body in bodies(warmup, "warm")]
    await wait_ready(port)
    pool = Clients(port, clients)
    poller = Stats(port) if stats else None
    try:
        # The warm-up opens the connections, starts the threads and fills the caches; its
        # completions finish before the measured phase begins.
        await pool.run(Load(requests=warm))
        if poller is not None:
            await wait_idle(poller, STALL_S)
        gen_cpu = time.process_time()
        cpu_before = cpu_s(server)
        load = Load(requests=requests)
        first = await pool.run(load)
        cpu_posts = cpu_s(server) - cpu_before
        gen_cpu = time.process_time() - gen_cpu
        result = phase_result(load, first, cpu_posts, gen_cpu)
        if poller is not None:
            samples = await wait_idle(poller, STALL_S + n / 5)
            result.update(drain_result(samples, load.last_at, first, n))
            result["cpu_total_ms_per_completion"] = (cpu_s(server) - cpu_before) / n * 1e3
    finally:
        await pool.close()
        if poller is not None:
            await poller.close()
    return result


def phase_result(load: Load, first: float, cpu_s_posts: float, gen_cpu_s: float) -> Result:
    n = len(load.requests)
    elapsed = load.last_at - first
    unexpected = {str(k): v for k, v in load.statuses.items() if k not in (200, 202, 503)}
    return {
        "posts": n,
        "posts_per_s": n / elapsed,
        "p50_ms": percentile(load.latencies, 50) * 1e3,
        "p99_ms": percentile(load.latencies, 99) * 1e3,
        "refused_503": load.statuses.get(503, 0),
        "unexpected": unexpected,
        "cpu_ms_per_request": cpu_s_posts / n * 1e3,
        "loadgen_cpu_ms_per_request": gen_cpu_s / n * 1e3,
        "post_phase_s": elapsed,
    }


def drain_result(
    samples: list[tuple[float, int, int]], last_post: float, first_post: float, n: int
) -> Result:
    """The drain rate over the quiet period after the last POST, and the end-to-end rate.

    The first sample is taken right after the last response, so the backlog it shows is the
    one the jobs faced alone. The drain ends at the first sample with nothing pending, so the
    rate is low by at most ``POLL_S`` over the drain's length.
    """
    start_t, start_done, backlog = samples[0]
    end_t, end_done, _ = samples[-1]
    drain_s = end_t - start_t
    drained = end_done - start_done
    return {
        "backlog": backlog,
        "drain_s": drain_s,
        "drain_per_s": drained / drain_s if drained and drain_s > 0 else float("nan"),
        # From the first POST to the first sample with nothing pending: every completion of
        # the phase done, so this is the service's end-to-end processing rate.
        "end_to_end_per_s": n / (end_t - first_post),
        "drain_started_after_s": start_t - last_post,
    }
