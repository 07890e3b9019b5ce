"""``TaskChannel``: messages between the tasks of a run, first in first out."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class TaskChannel:
    """A first-in first-out channel: ``put`` and ``get`` as an ``asyncio.Queue`` (``get`` waits
    for an item), and ``peek_all`` to read what is waiting without taking it."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._nonempty = asyncio.Event()

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def put_nowait(self, item: Any) -> None:
        """``put`` for synchronous callbacks (event handlers, sync hooks)."""
        self._items.append(item)
        self._nonempty.set()

    async def get(self) -> Any:
        """The oldest item, waiting for one if there is none."""
        while not self._items:
            self._nonempty.clear()
            await self._nonempty.wait()
        return self._items.popleft()

    def peek_all(self) -> list[Any]:
        """Everything waiting, oldest first; it stays in the channel."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)
