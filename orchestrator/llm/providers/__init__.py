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
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from orchestrator.llm.providers.base import Endpoint, ProviderAdapter

IMPORT_SWITCH_INTERVAL = 0.0002  # seconds; the interpreter's default is 0.005
# Measured through the command line: a resumed run's first call 0.05 s sooner, no slower runs.
BUILD_GRACE_SECONDS = 0.03
# Provider kind -> (adapter module, class, seconds its import takes). The times were measured on
# 2 cores with the collector off (google-genai after openai, whose dependencies it shares); only
# their ratios matter: they order the imports.
_ADAPTERS: dict[str, tuple[str, str, float]] = {
    "openai": (".openai_compat", "OpenAICompatibleAdapter", 0.27),
    "gemini": (".gemini", "GeminiAdapter", 0.15),
    "anthropic": (".anthropic", "AnthropicAdapter", 0.55),
}
# An adapter class, as imported: built from an endpoint.
AdapterClass = Callable[[Endpoint], ProviderAdapter]


class _SdkLoader:
    """Imports adapter modules, and builds adapters, one at a time in a daemon thread.

    What calls wait for goes before what was only preloaded; within each, the order is import
    time over the calls expected to need that SDK (the order that makes calls wait least in
    all), and building an adapter whose SDK is in comes first: it takes milliseconds.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.imports: dict[str, Future[AdapterClass]] = {}
        self._weights: dict[str, float] = {}  # kind -> calls expected to need it
        self._queue: list[_Job] = []
        self._worker: threading.Thread | None = None
        self._jobs = itertools.count()
        self.owns_process = False  # see configure_for_command_line

    def preload(self, demand: Mapping[str, float]) -> None:
        """Queue the imports of the kinds in ``demand`` (kind -> calls expected to need it)."""
        with self._lock:
            for kind, calls in demand.items():
                if kind in _ADAPTERS and calls > 0:
                    self._weights[kind] = max(self._weights.get(kind, 0.0), calls)
                    self._import_future(kind)
            self._start()

    def adapter(self, kind: str, endpoint: Endpoint) -> Future[ProviderAdapter]:
        """An adapter for ``endpoint``, built here right after its SDK's import: on the event
        loop's thread, building an SDK client took several times as long while another SDK was
        being imported (they share one interpreter lock)."""
        with self._lock:
            imported = self._import_future(kind)
            for job in self._queue:
                if job.future is imported:
                    job.demanded = True
            built: Future[ProviderAdapter] = Future()
            job = _Job(kind, next(self._jobs), lambda: imported.result()(endpoint), built)
            job.after, job.demanded = imported, True
            self._queue.append(job)
            self._start()
            return built

    def _import_future(self, kind: str) -> Future[AdapterClass]:
        future = self.imports.get(kind)
        if future is None:
            future = self.imports[kind] = Future()
            self._queue.append(_Job(kind, next(self._jobs), lambda: _import(kind), future))
        return future

    def _order(self, job: _Job) -> tuple[bool, float, int]:
        if job.after is not None and job.after.done():
            seconds = 0.0
        else:
            seconds = _ADAPTERS[job.kind][2] / self._weights.get(job.kind, 1.0)
        return (not job.demanded, seconds, job.seq)

    def _start(self) -> None:
        if self._queue and self._worker is None:
            # A daemon thread: a run that ends before an import does never waits for it.
            self._worker = threading.Thread(
                target=self._work, name="orchestrator-sdk-import", daemon=True
            )
            self._worker.start()

    def _work(self) -> None:
        switch_interval = sys.getswitchinterval()
        if self.owns_process:
            # An import holds the interpreter lock for long stretches; the event loop, woken
            # by every socket event, waited up to 5 ms for it each time.
            sys.setswitchinterval(IMPORT_SWITCH_INTERVAL)
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        self._worker = None
                        return
                    job = min(self._queue, key=self._order)
                    self._queue.remove(job)
                if not job.future.set_running_or_notify_cancel():
                    continue
                try:
                    job.future.set_result(job.run())
                except BaseException as exc:  # handed to whoever awaits it
                    job.future.set_exception(exc)
                if job.after is not None and self._queue:
                    # The calls that waited for this adapter send their requests with the
                    # interpreter to themselves before the next import competes for it.
                    time.sleep(BUILD_GRACE_SECONDS)
        finally:
            sys.setswitchinterval(switch_interval)


@dataclass
class _Job:
    kind: str
    seq: int
    run: Callable[[], Any]
    future: Future[Any]
    demanded: bool = False  # a call waits for it
    after: Future[Any] | None = None  # the import an adapter's construction needs


def _import(kind: str) -> AdapterClass:
    module, name, _ = _ADAPTERS[kind]
    # The SDKs build thousands of classes; cyclic garbage collections over that growing heap
    # were a quarter of their import time. Nothing an import makes is cyclic garbage.
    collecting = gc.isenabled()
    gc.disable()
    try:
        adapter_class: AdapterClass = getattr(importlib.import_module(module, __name__), name)
        if _loader.owns_process:
            # Otherwise the next young-generation collections walk every object the import
            # made (measured: 0.3 s of pauses in the first seconds of a run).
            gc.freeze()
        return adapter_class
    finally:
        if collecting:
            gc.enable()


_loader = _SdkLoader()


def configure_for_command_line() -> None:
    """Tune the imports for a process that is all ours, as the command line's is.

    What each SDK import creates is moved out of the garbage collector's reach for good
    (``gc.freeze``, which would also exempt a library user's own objects), and while imports
    run the interpreter hands its lock between threads more often, so the event loop's calls
    are not starved by them (``sys.setswitchinterval``, process-wide).
    """
    _loader.owns_process = True


def preload(demand: Mapping[str, float]) -> None:
    """Start importing, in the background, the SDKs of the provider kinds a run will use;
    ``demand`` maps each kind to how many of the run's first calls need it."""
    _loader.preload(demand)


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
