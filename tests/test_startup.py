"""Start-up: a run imports only the vendor SDKs it uses, and never on the event loop's thread."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import pytest
from conftest import clean_environment, fake_env

from orchestrator.llm import providers
from orchestrator.llm.providers.base import Endpoint

SDKS = ("openai", "anthropic", "google.genai")

# Runs the command line in a fresh interpreter, noting which thread first imports each SDK.
# Also notes every module of theirs (and of ``jsonschema``) imported on the event loop's thread
# at any time: the SDKs load some of their parts on first use.
WATCH_IMPORTS = """
import asyncio, json, sys, threading
SDKS = {sdks!r}
WATCHED = tuple(SDKS) + ("jsonschema",)
seen, on_loop = {{}}, set()

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name in SDKS and name not in seen:
            seen[name] = threading.current_thread().name
        if name.startswith(WATCHED) and asyncio._get_running_loop() is not None:
            on_loop.add(name)
        return None

sys.meta_path.insert(0, Watch())
from orchestrator.cli.app import run
try:
    run()
except SystemExit as exit:
    print(json.dumps({{"code": exit.code, "imported_by": seen, "on_loop": sorted(on_loop)}}))
"""


def run_watched(env: dict[str, str], cwd) -> dict:
    result = subprocess.run(
        [
            sys.executable, "-c", WATCH_IMPORTS.format(sdks=SDKS),
            "-p", "[project] Build an add library", "-c", "add works", "--budget", "2",
        ],
        cwd=cwd, env={**clean_environment(), **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("providers_keyed", "expected"),
    [
        pytest.param(("openai",), {"openai"}, id="one-provider"),
        pytest.param(None, set(SDKS), id="every-provider"),
    ],
)
def test_a_run_imports_only_the_sdks_it_uses_and_none_on_the_event_loop(
    fake, llm, tmp_path, providers_keyed, expected
):
    env = {**fake_env(fake.base_url, providers_keyed), "ORCHESTRATOR_HOME": str(tmp_path)}

    report = run_watched(env, tmp_path)

    assert report["code"] == 0
    assert set(report["imported_by"]) == expected
    assert set(report["imported_by"].values()) == {"orchestrator-sdk-import"}
    assert report["on_loop"] == []  # nothing of theirs is imported while the loop waits


class GatedImports:
    """Stands in for the SDK imports: records their order, the first one held at a gate."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.started = threading.Event()
        self.gate = threading.Event()

    def __call__(self, kind: str) -> type:
        if not self.order:
            self.started.set()
            self.gate.wait(10)
        self.order.append(kind)
        return lambda endpoint: ("adapter", kind, endpoint.provider)


def endpoint(provider: str) -> Endpoint:
    return Endpoint(provider=provider, base_url=None, api_key="k", timeout=1)


def test_what_a_call_waits_for_is_imported_before_what_was_only_preloaded(monkeypatch):
    imports = GatedImports()
    monkeypatch.setattr(providers, "_import", imports)
    loader = providers._SdkLoader()

    loader.preload({"anthropic": 1, "gemini": 1, "openai": 1})
    assert imports.started.wait(10)  # one starts at once: gemini, the quickest per call
    wanted = loader.adapter("anthropic", endpoint("anthropic"))
    imports.gate.set()

    assert wanted.result(10) == ("adapter", "anthropic", "anthropic")
    loader.imports["openai"].result(10)
    assert imports.order == ["gemini", "anthropic", "openai"]


async def test_a_cancelled_caller_does_not_cancel_the_import_others_wait_for(monkeypatch):
    imports = GatedImports()
    monkeypatch.setattr(providers, "_import", imports)
    monkeypatch.setattr(providers, "_loader", providers._SdkLoader())

    first = asyncio.create_task(providers.load_adapter("gemini", endpoint("google")))
    second = asyncio.create_task(providers.load_adapter("gemini", endpoint("google")))
    await asyncio.sleep(0.05)
    first.cancel()
    imports.gate.set()

    assert await second == ("adapter", "gemini", "google")
    assert first.cancelled()
    assert imports.order == ["gemini"]


def test_preloading_favours_the_sdks_most_first_calls_need(monkeypatch):
    imports = GatedImports()
    monkeypatch.setattr(providers, "_import", imports)
    loader = providers._SdkLoader()

    loader.preload({"openai": 1})
    assert imports.started.wait(10)
    # Anthropic's SDK takes longest to import, but ten calls wait for it and one for gemini's.
    loader.preload({"gemini": 1, "anthropic": 10})
    imports.gate.set()

    loader.imports["gemini"].result(10)
    assert imports.order == ["openai", "anthropic", "gemini"]
