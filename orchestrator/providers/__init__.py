"""One adapter per vendor SDK, all behind ``ProviderAdapter``.

The SDKs are large (importing ``anthropic`` alone takes most of a second), so an adapter module
is imported only for a provider kind a run uses, and off the event loop: ``preload`` starts
importing in a background thread, and ``load_adapter`` awaits that import, so calls already in
flight keep going meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import itertools
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .base import Endpoint, ProviderAdapter

# Provider kind -> (adapter module, class), in the order they are cheapest to import: the
# calls waiting for the cheaper SDKs start first (measured: openai 0.26 s, google-genai 0.32 s,
# anthropic 0.8 s on 2 cores).
_ADAPTERS: dict[str, tuple[str, str]] = {
    "openai": (".openai_compat", "OpenAICompatibleAdapter"),
    "gemini": (".gemini", "GeminiAdapter"),
    "anthropic": (".anthropic", "AnthropicAdapter"),
}


class _SdkLoader:
    """Imports adapter modules one at a time in a daemon thread: what calls wait for before what
    was only preloaded, the cheapest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.imports: dict[str, Future[type]] = {}
        self._queue: list[_Job] = []
        self._worker: threading.Thread | None = None
        self._jobs = itertools.count()
        self.freeze = False

    def preload(self, kinds: Iterable[str]) -> None:
        """Queue the imports of ``kinds`` not imported or queued yet."""
        with self._lock:
            for kind in kinds:
                if kind in _ADAPTERS:
                    self._import_future(kind)
            self._start()

    def adapter(self, kind: str, endpoint: Endpoint) -> Future[ProviderAdapter]:
        """An adapter for ``endpoint``, built in this thread right after its SDK's import, ahead
        of anything only preloaded: on the event loop's thread, building an SDK client took
        several times as long while another SDK was being imported (one interpreter lock)."""
        with self._lock:
            imported = self._import_future(kind)
            for job in self._queue:
                if job.future is imported:
                    job.demanded = True
            built: Future[ProviderAdapter] = Future()
            build = _Job(_cost(kind), next(self._jobs), lambda: imported.result()(endpoint), built)
            build.demanded = True
            self._queue.append(build)
            self._start()
            return built

    def _import_future(self, kind: str) -> Future[type]:
        future = self.imports.get(kind)
        if future is None:
            future = self.imports[kind] = Future()
            self._queue.append(_Job(_cost(kind), next(self._jobs), lambda: _import(kind), future))
        return future

    def _start(self) -> None:
        if self._queue and self._worker is None:
            # A daemon thread: a run that ends before an import does never waits for it.
            self._worker = threading.Thread(
                target=self._work, name="orchestrator-sdk-import", daemon=True
            )
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._worker = None
                    return
                job = min(self._queue, key=_Job.order)
                self._queue.remove(job)
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(job.run())
            except BaseException as exc:  # handed to whoever awaits it
                job.future.set_exception(exc)


@dataclass
class _Job:
    cost: int
    seq: int
    run: Callable[[], Any]
    future: Future[Any]
    demanded: bool = False  # a call waits for it

    def order(self) -> tuple[bool, int, int]:
        return (not self.demanded, self.cost, self.seq)


def _cost(kind: str) -> int:
    return list(_ADAPTERS).index(kind)


def _import(kind: str) -> type:
    module, name = _ADAPTERS[kind]
    # The SDKs build thousands of classes; cyclic garbage collections over that growing heap
    # were a quarter of their import time. Nothing an import makes is cyclic garbage.
    collecting = gc.isenabled()
    gc.disable()
    try:
        adapter_class = getattr(importlib.import_module(module, __name__), name)
        if _loader.freeze:
            # Otherwise the next young-generation collections walk every object the import
            # made (measured: 0.3 s of pauses in the first seconds of a run).
            gc.freeze()
        return adapter_class
    finally:
        if collecting:
            gc.enable()


_loader = _SdkLoader()


def freeze_imported_sdks() -> None:
    """Move what each SDK import creates out of reach of the garbage collector for good.

    For a process that owns its heap, such as the command line: ``gc.freeze`` also exempts
    whatever else exists at that moment, so a library user's process is never asked to.
    """
    _loader.freeze = True


def preload(kinds: Iterable[str]) -> None:
    """Start importing, in the background, the SDKs of the provider ``kinds`` a run will use."""
    _loader.preload(kinds)


async def load_adapter(kind: str, endpoint: Endpoint) -> ProviderAdapter:
    """The adapter for ``kind``, its SDK imported and its client built off the event loop."""
    if kind not in _ADAPTERS:
        raise ValueError(f"unknown provider kind {kind!r}")
    imported = _loader.imports.get(kind)
    if imported is not None and imported.done():
        # Its SDK is in: a thread of its own, not behind another SDK's import.
        adapter: ProviderAdapter = await asyncio.to_thread(imported.result(), endpoint)
        return adapter
    # Shielded: a caller cancelled (Ctrl-C, a deadline) leaves the job to finish in the thread.
    return await asyncio.shield(asyncio.wrap_future(_loader.adapter(kind, endpoint)))


def make_adapter(kind: str, endpoint: Endpoint) -> ProviderAdapter:
    """The adapter for ``kind``, imported here and now (for code outside an event loop)."""
    if kind not in _ADAPTERS:
        raise ValueError(f"unknown provider kind {kind!r}")
    adapter_class: Any = _import(kind)
    return adapter_class(endpoint)
