"""A Redis of the test's own: a ``redis-server`` on a free port, stopped by its pid.

Where no ``redis-server`` binary exists (a user's fresh machine), fakeredis's TCP server
stands in; tests that need a real server (processes killed mid-flight, blocking reads
cancelled) say so when they skip there.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import pytest
from redis import Redis

from afterwork.testing import wait_until

REDIS_SERVER = shutil.which("redis-server")


@dataclass
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen[bytes] | None  # None: fakeredis

    @property
    def real(self) -> bool:
        return self.process is not None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with Redis(port=port, socket_connect_timeout=0.2) as client:
            return bool(client.ping())
    except Exception:
        return False


def start_redis() -> Iterator[RedisServer]:
    port = free_port()
    if REDIS_SERVER is None:
        from fakeredis import TcpFakeServer

        server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield RedisServer(f"redis://127.0.0.1:{port}/0", port, None)
        finally:
            server.shutdown()
            server.server_close()
        return
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        anyio.run(wait_until, lambda: _answers(port), "redis-server to answer")
        yield RedisServer(f"redis://127.0.0.1:{port}/0", port, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis server for this test alone."""
    yield from start_redis()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def real_redis(redis_server: RedisServer) -> RedisServer:
    """A real redis-server: tests that kill processes or cancel blocking reads need one."""
    if not redis_server.real:
        pytest.skip("needs a real redis-server (killed processes, blocking reads); none here")
    return redis_server
