"""UnifiedClient over HTTP: the real vendor SDKs talking to the local fake provider."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from conftest import FAST_RETRY, FakeClock, NoWait, eventually, fake_env
from fake_provider import Reply

from orchestrator import (
    ModelUnavailableError,
    NoProvidersError,
    ProviderError,
    RetryPolicy,
    StructuredOutputError,
    UnifiedClient,
)
from orchestrator.llm.retry import SYSTEM_CLOCK

# One model per vendor, and the wire format (fake "api") each one must arrive in.
VENDORS = [
    pytest.param("gpt-4o-mini", "openai", "/v1/chat/completions", id="openai"),
    pytest.param("claude-haiku-4-5", "anthropic", "/v1/messages", id="anthropic"),
    pytest.param(
        "gemini-2.5-flash", "gemini", "/v1beta/models/gemini-2.5-flash:generateContent", id="gemini"
    ),
    pytest.param("kimi-k2.6", "openai", "/v1/chat/completions", id="kimi"),
    pytest.param("deepseek-v4-flash", "openai", "/chat/completions", id="deepseek"),
]

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "score": {"type": "number"}},
    "required": ["title", "score"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(("model", "api", "path"), VENDORS)
async def test_each_vendor_answers_with_text_tokens_and_catalog_cost(
    client, fake, model, api, path
):
    fake.script(model, Reply(text="hello there", input_tokens=1000, output_tokens=500))

    answer = await client.complete(model, "Say hello", system="Be brief.", max_tokens=64)

    assert answer.text == "hello there"
    assert answer.model.id == model
    assert (answer.input_tokens, answer.output_tokens) == (1000, 500)
    price = answer.model.price
    assert answer.cost_usd == pytest.approx((1000 * price.input + 500 * price.output) / 1e6)
    assert answer.cost_usd > 0
    assert answer.latency_seconds > 0
    assert (answer.attempts, answer.paid_calls) == (1, 1)
    sent = fake.requests[-1]
    assert (sent.api, sent.path, sent.model) == (api, path, model)
    assert "Say hello" in sent.prompt_text and "Be brief." in sent.prompt_text


@pytest.mark.parametrize(("model", "api", "path"), VENDORS)
async def test_cached_prompt_tokens_are_billed_at_the_cached_price(client, fake, model, api, path):
    fake.script(model, Reply(text="ok", input_tokens=1000, output_tokens=10, cached_tokens=400))

    answer = await client.complete(model, "hi")

    # Anthropic reports cache reads apart from input_tokens; the others include them.
    prompt = 1400 if api == "anthropic" else 1000
    assert (answer.input_tokens, answer.cached_tokens) == (prompt, 400)
    price = answer.model.price
    expected = ((prompt - 400) * price.input + 400 * price.cached_input + 10 * price.output) / 1e6
    assert answer.cost_usd == pytest.approx(expected)


async def test_max_tokens_reaches_each_vendor_in_its_own_field(client, fake):
    await client.complete("gpt-4o-mini", "hi", max_tokens=77)
    await client.complete("deepseek-v4-flash", "hi", max_tokens=77)
    await client.complete("claude-haiku-4-5", "hi", max_tokens=77)
    await client.complete("gemini-2.5-flash", "hi", max_tokens=77)

    openai_body, deepseek_body, anthropic_body, gemini_body = (r.body for r in fake.requests)
    assert openai_body["max_completion_tokens"] == 77
    assert deepseek_body["max_tokens"] == 77
    assert anthropic_body["max_tokens"] == 77
    assert gemini_body["generationConfig"]["maxOutputTokens"] == 77


# -- structured output ------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "api", "path"), VENDORS)
async def test_structured_output_uses_native_schema_mode_where_the_catalog_says_so(
    client, fake, model, api, path
):
    fake.script(model, '{"title": "Plan", "score": 0.9}')

    answer = await client.complete(model, "Rate it", schema=ANSWER_SCHEMA)

    assert answer.parsed == {"title": "Plan", "score": 0.9}
    sent = fake.requests[-1]
    assert sent.wants_json
    if answer.model.json_schema:
        assert sent.schema == ANSWER_SCHEMA
    else:
        # JSON mode: the schema travels as instructions instead.
        assert sent.body["response_format"] == {"type": "json_object"}
        assert '"required": ["title", "score"]' in sent.prompt_text


async def test_openai_strict_mode_only_for_schemas_it_accepts(client, fake):
    open_schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fake.script("gpt-4o-mini", '{"title": "x", "score": 1}', '{"a": "y"}')

    await client.complete("gpt-4o-mini", "x", schema=ANSWER_SCHEMA)
    await client.complete("gpt-4o-mini", "x", schema=open_schema)

    strict_flags = [r.body["response_format"]["json_schema"]["strict"] for r in fake.requests]
    assert strict_flags == [True, False]


async def test_answer_wrapped_in_a_code_fence_is_still_parsed(client, fake):
    fake.script("kimi-k2.6", 'Here you go:\n```json\n{"title": "T", "score": 1}\n```')

    answer = await client.complete("kimi-k2.6", "x", schema=ANSWER_SCHEMA)

    assert answer.parsed == {"title": "T", "score": 1}


@pytest.mark.parametrize(("model", "api", "path"), VENDORS)
async def test_invalid_structured_answer_is_repaired_with_one_more_request(
    client, fake, model, api, path
):
    fake.script(
        model,
        Reply(text='{"title": "Plan"}', input_tokens=100, output_tokens=10),
        Reply(text='{"title": "Plan", "score": 0.5}', input_tokens=200, output_tokens=20),
    )

    answer = await client.complete(model, "Rate it", schema=ANSWER_SCHEMA)

    assert answer.parsed == {"title": "Plan", "score": 0.5}
    assert answer.paid_calls == 2
    assert fake.count(model=model) == 2
    price = answer.model.price
    assert answer.cost_usd == pytest.approx((300 * price.input + 30 * price.output) / 1e6)
    repair = fake.requests[-1].prompt_text
    assert "'score' is a required property" in repair
    assert '{"title": "Plan"}' in repair  # the rejected answer is shown back to the model


@pytest.mark.parametrize(("model", "api", "path"), VENDORS)
async def test_structured_answer_that_stays_invalid_fails_clearly_and_reports_its_cost(
    client, fake, model, api, path
):
    fake.script(
        model,
        Reply(text="I cannot do that", input_tokens=100, output_tokens=10),
        Reply(text='{"title": 3}', input_tokens=100, output_tokens=10),
    )

    with pytest.raises(StructuredOutputError) as caught:
        await client.complete(model, "Rate it", schema=ANSWER_SCHEMA)

    assert fake.count(model=model) == 2
    assert model in str(caught.value) and "schema" in str(caught.value)
    price = client.catalog.resolve(model).price
    assert caught.value.spent_usd == pytest.approx((200 * price.input + 20 * price.output) / 1e6)


async def test_an_invalid_requested_schema_is_rejected_before_anything_is_paid(client, fake):
    from orchestrator import ConfigError

    with pytest.raises(ConfigError, match="JSON Schema is invalid"):
        await client.complete("gpt-4o-mini", "x", schema={"type": "no-such-type"})
    assert fake.count() == 0


# -- retries ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "api", "path"), VENDORS)
async def test_rate_limit_waits_for_retry_after_then_succeeds(fake, model, api, path):
    fake.script(model, Reply(status=429, headers={"retry-after": "1"}), "after the wait")
    clock = FakeClock()

    async with UnifiedClient(env=fake_env(fake.base_url), retry=RetryPolicy(clock=clock)) as c:
        answer = await c.complete(model, "hi")

    assert answer.text == "after the wait"
    assert answer.attempts == 2 and fake.count(model=model) == 2
    assert clock.sleeps == [1.0]  # what the vendor asked for, not the backoff's 0.25-0.5 s


async def test_the_system_clock_really_waits_what_retry_after_asks(fake):
    fake.script("gpt-4o-mini", Reply(status=429, headers={"retry-after-ms": "300"}), "later")

    async with UnifiedClient(env=fake_env(fake.base_url)) as client:
        assert client.retry.clock is SYSTEM_CLOCK
        started = time.monotonic()
        answer = await client.complete("gpt-4o-mini", "hi")

    assert answer.text == "later"
    gap = fake.requests[1].received_at - fake.requests[0].received_at
    assert 0.29 <= gap < 2
    assert time.monotonic() - started >= 0.29


async def test_retry_after_is_capped(fake):
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_retry_after=0.2, clock=clock)
    fake.script("gpt-4o-mini", Reply(status=429, headers={"retry-after": "300"}), "ok")

    async with UnifiedClient(env=fake_env(fake.base_url), retry=policy) as client:
        answer = await client.complete("gpt-4o-mini", "hi")

    assert answer.text == "ok"
    assert clock.sleeps == [0.2]


@pytest.mark.parametrize(
    ("policy", "ceilings"),
    [
        (RetryPolicy(), [0.5, 1.0, 2.0]),  # the default: 0.5 s doubling, 4 attempts
        (RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=3.0), [1.0, 2.0, 3.0, 3.0, 3.0]),
    ],
    ids=["default", "capped"],
)
async def test_backoff_doubles_up_to_its_cap_with_equal_jitter(fake, policy, ceilings):
    clock = FakeClock()
    fake.set_down("gpt-4o-mini")
    retry = dataclasses.replace(policy, clock=clock)

    async with UnifiedClient(
        env=fake_env(fake.base_url), retry=retry, failure_threshold=10
    ) as client:
        with pytest.raises(ProviderError) as caught:
            await client.complete("gpt-4o-mini", "hi")

    assert caught.value.attempts == policy.max_attempts == fake.count(model="gpt-4o-mini")
    assert len(clock.sleeps) == len(ceilings)
    for wait, ceiling in zip(clock.sleeps, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling  # never less than half the step


@pytest.mark.parametrize(("model", "api", "path"), VENDORS)
@pytest.mark.parametrize("status", [500, 502, 503, 529, 408])
async def test_server_errors_are_retried(client, fake, model, api, path, status):
    fake.script(model, Reply(status=status), Reply(status=status), "recovered")

    answer = await client.complete(model, "hi")

    assert answer.text == "recovered"
    assert answer.attempts == 3
    assert fake.count(model=model) == 3


async def test_retries_give_up_after_the_policy_limit(client, fake):
    fake.set_down("gpt-4o-mini")

    with pytest.raises(ProviderError) as caught:
        await client.complete("gpt-4o-mini", "hi")

    assert caught.value.retryable
    assert caught.value.attempts == FAST_RETRY.max_attempts
    assert caught.value.status == 503
    assert fake.count(model="gpt-4o-mini") == FAST_RETRY.max_attempts


@pytest.mark.parametrize(("model", "api", "path"), VENDORS)
@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_fail_at_once(client, fake, model, api, path, status):
    fake.script(model, Reply(status=status), "never reached")

    with pytest.raises(ProviderError) as caught:
        await client.complete(model, "hi")

    assert caught.value.status == status
    assert not caught.value.retryable
    assert fake.count(model=model) == 1
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("model", "api", "path"), VENDORS)
async def test_a_call_that_takes_too_long_times_out_and_is_retried(fake, model, api, path):
    fake.script(model, Reply(text="too late", delay=3), "in time")

    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY, timeout=0.5) as client:
        started = time.monotonic()
        answer = await client.complete(model, "hi")

    assert answer.text == "in time"
    assert answer.attempts == 2
    assert time.monotonic() - started < 2.5


async def test_timeouts_that_persist_fail_as_retryable(fake):
    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01, clock=NoWait())
    fake.script("claude-haiku-4-5", Reply(delay=3), Reply(delay=3))

    async with UnifiedClient(env=fake_env(fake.base_url), retry=policy, timeout=0.3) as client:
        with pytest.raises(ProviderError, match="timed out") as caught:
            await client.complete("claude-haiku-4-5", "hi")

    assert caught.value.retryable and caught.value.attempts == 2


# -- health -----------------------------------------------------------------------------------
async def test_a_model_that_keeps_failing_is_marked_unhealthy_then_recovers(fake):
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=1, clock=clock)
    async with UnifiedClient(
        env=fake_env(fake.base_url), retry=policy, failure_threshold=2, cooldown=0.5
    ) as client:
        fake.set_down("gemini-2.5-flash")
        for _ in range(2):
            with pytest.raises(ProviderError):
                await client.complete("gemini-2.5-flash", "hi")

        assert client.api_health()["gemini-2.5-flash"] is False
        assert client.api_health()["gemini-2.5-pro"] is True  # only the failing model
        with pytest.raises(ModelUnavailableError):
            await client.complete("gemini-2.5-flash", "hi")
        assert fake.count(model="gemini-2.5-flash") == 2  # the open breaker made no call

        fake.set_down("gemini-2.5-flash", False)
        clock.advance(0.4)
        assert not client.is_healthy("gemini-2.5-flash")  # still cooling down
        clock.advance(0.1)
        assert client.is_healthy("gemini-2.5-flash")
        assert (await client.complete("gemini-2.5-flash", "hi")).text == "ok"
        assert client.api_health()["gemini-2.5-flash"] is True


async def test_an_unreachable_vendor_marks_all_its_models_unhealthy(fake):
    env = fake_env(fake.base_url)
    env["ANTHROPIC_BASE_URL"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.01, clock=NoWait())
    async with UnifiedClient(env=env, retry=policy, failure_threshold=3, cooldown=30) as client:
        with pytest.raises(ProviderError, match="connection"):
            await client.complete("claude-haiku-4-5", "hi")

        health = client.api_health()
        assert not any(v for k, v in health.items() if k.startswith("claude"))
        assert health["gpt-4o-mini"] is True
        with pytest.raises(ModelUnavailableError):
            await client.complete("claude-opus-5", "hi")


async def test_a_rejected_key_disables_the_vendor_until_the_cooldown(fake):
    async with UnifiedClient(env=fake_env(fake.base_url), cooldown=30) as client:
        fake.script("gpt-4o", Reply(status=401))
        with pytest.raises(ProviderError):
            await client.complete("gpt-4o", "hi")
        assert client.is_healthy("gpt-4o-mini") is False
        assert client.is_healthy("claude-haiku-4-5") is True


# -- keys, concurrency, lifecycle ---------------------------------------------------------------
async def test_providers_without_a_key_are_skipped(fake):
    env = fake_env(fake.base_url, providers=("anthropic", "deepseek"))
    async with UnifiedClient(env=env) as client:
        assert client.usable_providers() == ["anthropic", "deepseek"]
        assert {m.provider for m in client.available_models()} == {"anthropic", "deepseek"}
        assert set(client.api_health()) == {m.id for m in client.available_models()}
        with pytest.raises(NoProvidersError, match="OPENAI_API_KEY"):
            await client.complete("gpt-4o", "hi")
    assert fake.count() == 0


async def test_no_key_at_all_names_every_variable_to_set():
    async with UnifiedClient(env={}) as client:
        with pytest.raises(NoProvidersError) as caught:
            client.require_providers()
    message = str(caught.value)
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY"):
        assert name in message
    for name in ("KIMI_API_KEY", "MOONSHOT_API_KEY", "DEEPSEEK_API_KEY"):
        assert name in message
    assert "\n" not in message


async def test_either_key_spelling_enables_a_vendor(fake):
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY"):
        env = {name: "test", "GOOGLE_GEMINI_BASE_URL": fake.base_url}
        async with UnifiedClient(env=env) as client:
            assert client.usable_providers() == ["google"]
            assert (await client.complete("gemini-pro", "hi")).text == "ok"
    assert fake.requests[-1].headers["x-goog-api-key"] == "test"


async def test_calls_in_flight_never_exceed_the_concurrency_limit(fake):
    fake.responder = lambda request: Reply(text="ok", delay=0.3)
    async with UnifiedClient(env=fake_env(fake.base_url), max_concurrency=2) as client:
        started = time.monotonic()
        models = ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash", "kimi-k2.6"] * 2
        await asyncio.gather(*(client.complete(m, "hi") for m in models))
        elapsed = time.monotonic() - started

    arrivals = sorted(r.received_at for r in fake.requests)
    # With two slots, the third request can only start once the first answer is back.
    assert all(
        later - earlier >= 0.25 for earlier, later in zip(arrivals, arrivals[2:], strict=False)
    )
    assert elapsed >= 4 * 0.3


async def test_cancelling_a_call_stops_it_at_once_and_frees_its_slot(fake):
    fake.script("gpt-4o-mini", Reply(delay=5))
    async with UnifiedClient(env=fake_env(fake.base_url), max_concurrency=1) as client:
        call = asyncio.create_task(client.complete("gpt-4o-mini", "hi"))
        await eventually(lambda: fake.count() == 1)  # in flight (the SDK's import comes first)
        started = time.monotonic()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert time.monotonic() - started < 0.5

        answer = await asyncio.wait_for(client.complete("gpt-4o-mini", "again"), timeout=2)
        assert answer.text == "ok"


async def test_closing_the_client_closes_every_vendor_connection(fake):
    client = UnifiedClient(env=fake_env(fake.base_url))
    for model in ("gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"):
        await client.complete(model, "hi")
    sdk_clients = [adapter._client for adapter in client._adapters.values()]

    await client.aclose()

    openai_client, anthropic_client, _ = sdk_clients
    assert openai_client.is_closed() and anthropic_client.is_closed()
    assert client._adapters == {}


async def test_a_temperature_never_breaks_a_call_to_anthropic(client, fake):
    # The Anthropic SDK's messages.create takes no sampling parameters any more.
    answer = await client.complete("claude-haiku-4-5", "hello", temperature=0.2)

    assert answer.text and "temperature" not in fake.requests[-1].body
