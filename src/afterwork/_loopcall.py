"""Scheduling a callback on the event loop from another thread, without waiting for it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from anyio.lowlevel import EventLoopToken


def call_soon_threadsafe(token: EventLoopToken, fn: Callable[..., object], *args: Any) -> None:
    """Run ``fn(*args)`` on the loop of ``token`` soon. Returns at once.

    ``anyio.from_thread.run_sync`` would wait for the loop to run it, holding the calling
    thread for a round trip; both backends accept a plain callback instead. A loop that has
    already closed has nobody left to call: the callback is dropped.
    """
    native: Any = token.native_token
    try:
        if hasattr(native, "call_soon_threadsafe"):  # asyncio: the loop itself
            native.call_soon_threadsafe(fn, *args)
        else:  # trio: a TrioToken
            native.run_sync_soon(fn, *args)
    except RuntimeError:
        pass  # the loop is closed
