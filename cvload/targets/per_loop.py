"""One client object per event loop: an aiohttp session or a gRPC channel belongs to the loop it was made on, and
one target may serve several loops (the engine's, a probe's); a loop that ends drops its entry with it."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """``get()`` gives the running loop's object, made by ``make`` when there is none (or ``usable`` says the one
    there is spent: a closed session); ``close()`` closes and forgets it."""

    def __init__(self, make: Callable[[], T], close: Callable[[T], Awaitable[object]],
                 usable: Callable[[T], bool] = lambda _: True) -> None:
        self._make, self._close, self._usable = make, close, usable
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None or not self._usable(item):
            item = self._items[loop] = self._make()
        return item

    def current(self) -> T | None:
        """The running loop's object if it has one; never makes one."""
        return self._items.get(asyncio.get_running_loop())

    async def close(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - close() is a coroutine, a loop runs
            return
        item = self._items.pop(loop, None)
        if item is not None:
            await self._close(item)
