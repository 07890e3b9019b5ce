"""A user's own OpenAI-compatible endpoint (Ollama, vLLM, a gateway), called over real HTTP."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest
from conftest import fake_env, run_cli
from fake_provider import Reply
from test_resume import FAST

from orchestrator import (
    Budget,
    ContextWindowError,
    NoProvidersError,
    Orchestrator,
    ProviderError,
    UnifiedClient,
)
from orchestrator.run.tasks import ProjectStatus, Task, TaskType

MODEL_ID = "llama3.1:8b"


def local_catalog(
    directory: Path,
    base_url: str,
    *,
    key_env: str | None = None,
    price: str = "{input: 0, output: 0}",
) -> Path:
    key_line = f"key_env: [{key_env}]" if key_env else ""
    text = f"""
        providers:
          local:
            kind: openai
            base_url: {base_url}/custom/v1
            {key_line}
        models:
          - id: "{MODEL_ID}"
            provider: local
            alias: llama-local
            price: {price}
            context_window: 131072
            max_output_tokens: 4096
    """
    path = directory / "catalog.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


async def test_keyless_endpoint_is_the_only_model_available_without_vendor_keys(tmp_path, fake):
    path = local_catalog(tmp_path, fake.base_url)
    async with UnifiedClient(catalog_path=path, env={}) as client:
        assert client.usable_providers() == ["local"]
        assert [m.key for m in client.available_models()] == [f"local/{MODEL_ID}"]
        client.require_providers()  # does not raise


async def test_completion_through_the_custom_endpoint_is_free(tmp_path, fake):
    fake.script(MODEL_ID, Reply(text="hello from llama", input_tokens=1000, output_tokens=500))
    path = local_catalog(tmp_path, fake.base_url)
    async with UnifiedClient(catalog_path=path, env={}) as client:
        result = await client.complete("llama-local", "hi")
    assert result.text == "hello from llama"
    assert result.cost_usd == 0.0
    assert (result.provider, result.model.id) == ("local", MODEL_ID)
    assert (result.input_tokens, result.output_tokens) == (1000, 500)
    assert len(fake.requests) == 1
    request = fake.requests[0]
    assert request.path == "/custom/v1/chat/completions"
    assert request.api == "openai"
    assert request.model == MODEL_ID
    assert "hi" in request.prompt_text


async def test_custom_endpoint_is_billed_at_the_user_catalog_price(tmp_path, fake):
    fake.script(MODEL_ID, Reply(text="ok", input_tokens=1000, output_tokens=500))
    path = local_catalog(tmp_path, fake.base_url, price="{input: 1.0, output: 2.0}")
    async with UnifiedClient(catalog_path=path, env={}) as client:
        result = await client.complete("llama-local", "hi")
    # 1000 input tokens at $1 / 1M + 500 output tokens at $2 / 1M
    assert result.cost_usd == pytest.approx(0.002)


async def test_vendor_base_url_variables_do_not_redirect_the_custom_endpoint(tmp_path, fake):
    path = local_catalog(tmp_path, fake.base_url)
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-test"}
    async with UnifiedClient(catalog_path=path, env=env) as client:
        await client.complete("llama-local", "hi")
    assert [r.path for r in fake.requests] == ["/custom/v1/chat/completions"]


async def test_endpoint_with_key_env_sends_that_key_as_bearer_token(tmp_path, fake):
    path = local_catalog(tmp_path, fake.base_url, key_env="LOCAL_KEY")
    async with UnifiedClient(catalog_path=path, env={"LOCAL_KEY": "local-secret"}) as client:
        assert client.usable_providers() == ["local"]
        result = await client.complete("llama-local", "hi")
    assert result.text == "ok"
    assert fake.requests[-1].headers["authorization"] == "Bearer local-secret"


async def test_endpoint_with_key_env_is_unavailable_until_the_key_is_set(tmp_path, fake):
    path = local_catalog(tmp_path, fake.base_url, key_env="LOCAL_KEY")
    async with UnifiedClient(catalog_path=path, env={}) as client:
        assert client.available_models() == []
        with pytest.raises(NoProvidersError, match="LOCAL_KEY"):
            client.require_providers()
        with pytest.raises(NoProvidersError, match="LOCAL_KEY"):
            await client.complete("llama-local", "hi")
    assert fake.requests == []


async def test_a_local_server_gets_the_schemas_bounds_and_a_cloud_vendor_does_not(
    tmp_path, fake, client
):
    from orchestrator.run.prompts import EVALUATION_SCHEMA

    fake.responder = lambda request: {"score": 0.5, "reasoning": "fine"}
    path = local_catalog(tmp_path, fake.base_url)
    text = path.read_text().replace("max_output_tokens: 4096", "max_output_tokens: 4096\n"
                                    "    capabilities: {json_schema: true}")  # fmt: skip
    path.write_text(text)
    async with UnifiedClient(catalog_path=path, env={}) as local:
        await local.complete("llama-local", "grade", schema=EVALUATION_SCHEMA)
    await client.complete("gpt-4o", "grade", schema=EVALUATION_SCHEMA)

    local_sent, vendor_sent = (r.body["response_format"]["json_schema"] for r in fake.requests)
    assert local_sent["schema"]["properties"]["reasoning"]["maxLength"] == 400
    # A grammar keeps a number's type but not its range: the server gets the values in range.
    scores = local_sent["schema"]["properties"]["score"]["enum"]
    assert len(scores) == 101 and min(scores) == 0 and max(scores) == 1
    assert "maxLength" not in vendor_sent["schema"]["properties"]["reasoning"]
    assert vendor_sent["strict"] is True


async def test_the_output_limit_never_passes_the_models_context_window(tmp_path, fake):
    path = local_catalog(tmp_path, fake.base_url)
    path.write_text(path.read_text().replace("context_window: 131072", "context_window: 4096"))
    prompt = "x" * 1400  # a 1,400-byte prompt is at most about 1,450 tokens with the template

    async with UnifiedClient(catalog_path=path, env={}) as client:
        await client.complete("llama-local", prompt, max_tokens=4096)
        with pytest.raises(ContextWindowError, match="context window"):
            await client.complete("llama-local", "x" * 5000)

    (sent,) = fake.requests  # the prompt that cannot fit was never sent
    assert sent.body["max_tokens"] + 1400 <= 4096
    assert sent.body["max_tokens"] >= 2000  # lowered to fit, not to nothing


async def test_an_endpoint_that_is_not_running_is_an_outage_naming_its_url(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free: nothing listens there once closed
    path = local_catalog(tmp_path, f"http://127.0.0.1:{port}")
    tasks = {"core": Task("core", TaskType.CODE_GEN, "Write add.", [], ["python_syntax"])}
    async with UnifiedClient(catalog_path=path, env={}, retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=1.0), client=client, use_cache=False)
        state = await orch.run_project("add", "add works", tasks=tasks)

    assert state.status is ProjectStatus.SYSTEM_FAILURE  # an outage, not a quality verdict
    assert f"connection refused at http://127.0.0.1:{port}/custom/v1" in state.reason


async def test_an_answer_from_another_model_than_requested_is_said_once_and_noted(
    fake, client, caplog
):
    # OPENAI_BASE_URL pointed at a server that serves something else than the vendor's models.
    fake.script("gpt-4o", *[Reply("hi", answered_by="smollm2-135m-instruct")] * 2)
    fake.script("gpt-4o-mini", Reply("hi", answered_by="gpt-4o-mini-2024-07-18"))

    first = await client.complete("gpt-4o", "hello")
    second = await client.complete("gpt-4o", "hello again")
    dated = await client.complete("gpt-4o-mini", "hello")

    assert first.reported_model == "smollm2-135m-instruct"
    assert any("answered by 'smollm2-135m-instruct', not 'gpt-4o'" in n for n in first.notes)
    assert second.notes == first.notes
    assert not dated.notes  # a dated name of the requested model is the requested model
    warned = [r for r in caplog.records if "serves another model" in r.getMessage()]
    assert len(warned) == 1


def mismatch_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "serves another model" in r.getMessage()]


async def test_one_server_answering_for_every_vendor_model_is_warned_about_once(
    fake, client, caplog
):
    # One local server behind OPENAI_BASE_URL answers whatever vendor model id is asked for.
    vendor_ids = ["gpt-4o", "gpt-4o-mini", "gpt-5.5", "gpt-5.4-mini"]
    for model_id in vendor_ids:
        fake.script(model_id, Reply("hi", answered_by="smollm2-135m-instruct"))

    answers = [await client.complete(f"openai/{model_id}", "hello") for model_id in vendor_ids]

    # Each answer is noted with the model it asked for; the log says it once, naming the server.
    for model_id, answer in zip(vendor_ids, answers, strict=True):
        assert any(f"not {model_id!r}" in note for note in answer.notes)
    assert mismatch_warnings(caplog) == [
        f"the server at {fake.base_url}/v1 answers with 'smollm2-135m-instruct', not the model "
        "asked for ('gpt-4o'): it serves another model; costs are counted at the requested "
        "models' prices, and each such answer is noted"
    ]


async def test_another_model_answering_or_another_server_is_warned_about_again(
    fake, client, caplog
):
    fake.script("gpt-4o", Reply("hi", answered_by="smollm2-135m-instruct"))
    fake.script("gpt-4o-mini", Reply("hi", answered_by="qwen2.5-0.5b-instruct"))
    # DEEPSEEK_BASE_URL is the server's root, not its /v1: another endpoint, warned apart.
    fake.script("deepseek-v4-flash", Reply("hi", answered_by="smollm2-135m-instruct"))

    await client.complete("openai/gpt-4o", "hello")
    await client.complete("openai/gpt-4o-mini", "hello")
    await client.complete("deepseek/deepseek-v4-flash", "hello")

    warned = mismatch_warnings(caplog)
    assert len(warned) == 3
    assert "'qwen2.5-0.5b-instruct'" in warned[1]
    assert f"the server at {fake.base_url} answers" in warned[2]


async def test_a_providers_catalog_timeout_bounds_each_attempt(tmp_path, fake):
    path = local_catalog(tmp_path, fake.base_url)
    path.write_text(path.read_text().replace("base_url:", "timeout: 0.3\n    base_url:", 1))
    fake.script(MODEL_ID, Reply(text="late", delay=2.0), Reply(text="late", delay=2.0))

    async with UnifiedClient(catalog_path=path, env={}, retry=FAST, timeout=300) as client:
        assert client.attempt_timeout(client.catalog.resolve("llama-local")) == 0.3
        with pytest.raises(ProviderError, match="timed out"):
            await client.complete("llama-local", "hello")


def test_providers_hides_the_rest_of_the_catalog_from_a_run(fake, llm, tmp_path):
    path = local_catalog(tmp_path, fake.base_url)
    # Every vendor keyed too, and pointed at the same server: none of them may be asked.
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home")}

    result = run_cli(
        "-p", "[project] add", "-c", "add works", "--catalog", str(path), "--providers", "local",
        "--budget", "1", cwd=tmp_path, env=env,
    )  # fmt: skip

    assert result.returncode in (0, 3), result.stderr
    assert fake.requests and {r.model for r in fake.requests} == {MODEL_ID}
    assert "one model only" in result.stderr


def streaming_catalog(tmp_path, fake, timeout, kind="openai"):
    path = local_catalog(tmp_path, fake.base_url)
    text = f"stream: true\n    timeout: {timeout}\n    base_url:"
    text = path.read_text().replace("base_url:", text, 1).replace("kind: openai", f"kind: {kind}")
    if kind != "openai":  # their SDKs add their own paths to the server's root
        text = text.replace("/custom/v1", "")
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_a_slow_but_steady_streamed_answer_is_never_cut_off_by_the_time_limit(
    tmp_path, fake, kind
):
    answer_text = "one two three four five six seven eight"
    # 1.4 s in all, a word every 0.2 s: three times the 0.5 s limit, never 0.5 s without a word.
    fake.script(MODEL_ID, Reply(text=answer_text, stream_interval=0.2, output_tokens=8))
    path = streaming_catalog(tmp_path, fake, 0.5, kind)

    async with UnifiedClient(catalog_path=path, env={}, retry=FAST) as client:
        answer = await client.complete("llama-local", "count")

    assert answer.text == answer_text
    assert answer.output_tokens == 8 and not answer.usage_estimated  # usage from the stream
    assert answer.attempts == 1 and len(fake.requests) == 1  # not asked again from scratch
    sent = fake.requests[0]
    assert sent.body.get("stream") is True or sent.path.endswith(":streamGenerateContent")


async def test_a_stream_that_stalls_is_timed_out(tmp_path, fake):
    fake.script(MODEL_ID, *[Reply(text="late", delay=2.0)] * 2)
    path = streaming_catalog(tmp_path, fake, 0.3)

    async with UnifiedClient(catalog_path=path, env={}, retry=FAST) as client:
        with pytest.raises(ProviderError, match="timed out"):
            await client.complete("llama-local", "hello")
