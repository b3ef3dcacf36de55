"""The event loop a dispatcher lives on: reaching it from other threads, telling it apart from
other loops, and starting the dispatcher's own task outside any caller's scopes.

anyio covers both backends for nearly everything; these few needs it has no public API for,
so each is written once here, for asyncio and for trio.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
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
        if isinstance(native, asyncio.AbstractEventLoop):
            native.call_soon_threadsafe(fn, *args)
        else:  # trio: a TrioToken
            native.run_sync_soon(fn, *args)
    except RuntimeError:
        pass  # the loop is closed


def call_soon(token: EventLoopToken, fn: Callable[..., object], *args: Any) -> None:
    """Run ``fn(*args)`` once the loop of ``token`` has run what is ready now; call it from
    that loop. Cheaper than ``call_soon_threadsafe``, which also wakes the loop's selector."""
    native: Any = token.native_token
    if isinstance(native, asyncio.AbstractEventLoop):
        native.call_soon(fn, *args)
    else:  # trio: one way for both
        native.run_sync_soon(fn, *args)


def is_current(token: EventLoopToken) -> bool:
    """Whether the caller runs on the loop of ``token``, in its thread."""
    native: Any = token.native_token
    if isinstance(native, asyncio.AbstractEventLoop):
        # Cheaper than anyio.lowlevel.current_token(), and this runs on every submit.
        return asyncio._get_running_loop() is native
    try:
        import trio.lowlevel

        return trio.lowlevel.current_trio_token() is native
    except RuntimeError:  # no trio run in this thread
        return False


def spawn_unscoped(token: EventLoopToken, fn: Callable[[], Awaitable[object]], name: str) -> object:
    """Start ``fn()`` as a task of the loop itself, in no caller's cancel scope or nursery.

    The dispatcher's work lives in such a task so that it belongs to no caller: ``aclose()``
    may then be called from any task, from a job, or be abandoned half-way, and the drain
    still runs to its deadline in its own task. The task starts with an empty context, and
    must never raise (a trio system task that raises crashes the whole run).
    """
    native: Any = token.native_token
    context = contextvars.Context()
    if isinstance(native, asyncio.AbstractEventLoop):
        return native.create_task(_as_coroutine(fn), name=name, context=context)
    import trio.lowlevel

    return trio.lowlevel.spawn_system_task(fn, name=name, context=context)


async def _as_coroutine(fn: Callable[[], Awaitable[object]]) -> None:
    await fn()


def protect_from_interrupts(fn: Callable[..., Any]) -> None:
    """On trio, mark ``fn``'s frames as protected from ``KeyboardInterrupt``.

    Trio raises a Ctrl-C wherever unprotected code is running, a job included; under
    protection it delivers it to the main task instead, where the application handles it.
    Jobs then never see a real Ctrl-C, and any ``KeyboardInterrupt`` inside one is the job's
    own doing: its failure (G2). asyncio needs nothing: its runner turns Ctrl-C into
    cancelling the main task.
    """
    import trio.lowlevel

    trio.lowlevel.enable_ki_protection(fn)
