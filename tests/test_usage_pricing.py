"""Every vendor's usage, as its API really reports it, priced right.

Each answer below is a vendor's recorded response body (tests/fixtures/usage, each citing its
source), served by the fake provider so the real SDK parses it. A user relies on what
``UnifiedClient.complete`` reports: ``input_tokens`` counts every prompt token, cached ones
included; ``output_tokens`` counts reasoning / thinking tokens too, which every vendor bills as
output; ``cached_tokens`` the prompt tokens read from a cache; and ``cost_usd`` is those tokens at
the catalog's prices (USD per 1M tokens), worked out by hand in each test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FAST_RETRY, fake_env
from fake_provider import Reply

from orchestrator import UnifiedClient
from orchestrator.llm.catalog import Catalog, Price
from orchestrator.llm.client import Completion

FIXTURES = Path(__file__).parent / "fixtures" / "usage"
PICODOLLAR = 1e-12


async def answer_to(fake, fixture: str, *, streamed: bool = False) -> Completion:
    """The client's answer when the vendor answers with the recorded ``fixture``; ``streamed``
    asks that vendor for streamed answers, as a catalog with ``stream: true`` does."""
    recorded = json.loads((FIXTURES / fixture).read_text())
    model = recorded["model"]
    fake.script(model, Reply(body=recorded.get("body"), chunks=recorded.get("chunks")))
    catalog = Catalog.load(env={})
    if streamed:
        provider = catalog.resolve(model).provider
        catalog = catalog.extended("test", {"providers": {provider: {"stream": True}}})
    async with UnifiedClient(
        env=fake_env(fake.base_url), catalog=catalog, retry=FAST_RETRY, timeout=10
    ) as client:
        answer = await client.complete(model, "Write add(a, b).")
    sent = fake.requests[-1]
    asked_to_stream = bool(sent.body.get("stream")) or sent.path.endswith(":streamGenerateContent")
    assert asked_to_stream is streamed
    return answer


def assert_billed(
    answer: Completion, *, input_tokens: int, output_tokens: int, cached_tokens: int, cost: float
) -> None:
    assert not answer.usage_estimated  # read from the vendor's usage, never guessed
    assert answer.input_tokens == input_tokens
    assert answer.output_tokens == output_tokens
    assert answer.cached_tokens == cached_tokens
    assert answer.cost_usd == pytest.approx(cost, rel=0, abs=PICODOLLAR)


# -- OpenAI ----------------------------------------------------------------------------------
async def test_openai_cached_prompt_and_reasoning_tokens_are_priced_at_their_own_rates(fake):
    answer = await answer_to(fake, "openai_chat_cached_reasoning.json")

    assert answer.text == "def add(a, b):\n    return a + b\n"
    assert answer.model.price == Price(
        input=0.75, output=4.50, cached_input=0.075, cache_write=0.75
    )
    # prompt_tokens 3,187 of which 2,944 cached; completion_tokens 1,204 of which 896 reasoning.
    assert_billed(
        answer,
        input_tokens=3187,
        output_tokens=1204,
        cached_tokens=2944,
        # 243 uncached at $0.75 + 2,944 cached at $0.075 + 1,204 output at $4.50
        cost=(243 * 0.75 + 2944 * 0.075 + 1204 * 4.50) / 1_000_000,
    )


async def test_a_streamed_openai_answer_is_priced_from_its_final_usage_chunk(fake):
    answer = await answer_to(fake, "openai_stream_include_usage.json", streamed=True)

    assert answer.text == "Adds two numbers."
    assert answer.model.price == Price(
        input=5.00, output=30.00, cached_input=0.50, cache_write=5.00
    )
    # The last chunk: prompt_tokens 2,210 of which 1,920 cached; completion_tokens 655 of which
    # 512 reasoning.
    assert_billed(
        answer,
        input_tokens=2210,
        output_tokens=655,
        cached_tokens=1920,
        # 290 uncached at $5 + 1,920 cached at $0.50 + 655 output at $30
        cost=(290 * 5.00 + 1920 * 0.50 + 655 * 30.00) / 1_000_000,
    )


# -- Anthropic -------------------------------------------------------------------------------
async def test_anthropic_cache_reads_and_writes_count_as_input_at_their_own_rates(fake):
    answer = await answer_to(fake, "anthropic_message_cache.json")

    assert answer.text == "def add(a, b):\n    return a + b\n"  # the thinking block left out
    assert answer.model.price == Price(
        input=2.00, output=10.00, cached_input=0.20, cache_write=2.50
    )
    # input_tokens 57 leaves out the 6,144 read from the cache and the 1,843 written to it.
    assert_billed(
        answer,
        input_tokens=57 + 6144 + 1843,
        output_tokens=512,
        cached_tokens=6144,
        # 57 at $2 + 6,144 read at $0.20 + 1,843 written at $2.50 + 512 output at $10
        cost=(57 * 2.00 + 6144 * 0.20 + 1843 * 2.50 + 512 * 10.00) / 1_000_000,
    )
    assert answer.cache_write_tokens == 1843  # what was written to the cache is shown too


async def test_a_streamed_anthropic_answer_is_priced_from_message_start_and_message_delta(fake):
    answer = await answer_to(fake, "anthropic_stream_cache.json", streamed=True)

    assert answer.text == "Adds two numbers."
    assert answer.model.price == Price(input=1.00, output=5.00, cached_input=0.10, cache_write=1.25)
    # message_start: input_tokens 41, 4,608 read from the cache, 1,290 written (and a provisional
    # output_tokens 1); message_delta: output_tokens 389 in all.
    assert_billed(
        answer,
        input_tokens=41 + 4608 + 1290,
        output_tokens=389,
        cached_tokens=4608,
        # 41 at $1 + 4,608 read at $0.10 + 1,290 written at $1.25 + 389 output at $5
        cost=(41 * 1.00 + 4608 * 0.10 + 1290 * 1.25 + 389 * 5.00) / 1_000_000,
    )


# -- Gemini ----------------------------------------------------------------------------------
async def test_gemini_thinking_tokens_are_billed_as_output_and_cached_tokens_stay_input(fake):
    answer = await answer_to(fake, "gemini_generate_thinking_cached.json")

    assert answer.text == "def add(a, b):\n    return a + b\n"
    # The catalog has no cached price for Gemini: cached tokens cost the input price.
    assert answer.model.price == Price(input=0.30, output=2.50, cached_input=0.30, cache_write=0.30)
    # promptTokenCount 5,210 includes the 4,096 cached; candidatesTokenCount 388 leaves out the
    # thoughtsTokenCount 1,011.
    assert_billed(
        answer,
        input_tokens=5210,
        output_tokens=388 + 1011,
        cached_tokens=4096,
        # 1,114 uncached at $0.30 + 4,096 cached at $0.30 + 1,399 output at $2.50
        cost=(1114 * 0.30 + 4096 * 0.30 + 1399 * 2.50) / 1_000_000,
    )


async def test_a_streamed_gemini_answer_is_priced_from_its_last_piece(fake):
    answer = await answer_to(fake, "gemini_stream_thinking_cached.json", streamed=True)

    assert answer.text == "Adds two numbers."
    assert answer.model.price == Price(
        input=1.25, output=10.00, cached_input=1.25, cache_write=1.25
    )
    # The last piece: promptTokenCount 3,120 with 2,048 cached, candidatesTokenCount 142,
    # thoughtsTokenCount 830.
    assert_billed(
        answer,
        input_tokens=3120,
        output_tokens=142 + 830,
        cached_tokens=2048,
        # 1,072 uncached at $1.25 + 2,048 cached at $1.25 + 972 output at $10
        cost=(1072 * 1.25 + 2048 * 1.25 + 972 * 10.00) / 1_000_000,
    )


# -- DeepSeek and Kimi (OpenAI-compatible, each with its own cache field) ----------------------
async def test_deepseek_cache_hits_are_read_from_its_own_usage_field(fake):
    answer = await answer_to(fake, "deepseek_chat_cache_hit.json")

    assert answer.text == "def add(a, b):\n    return a + b\n"  # reasoning_content left out
    assert answer.model.price == Price(
        input=1.32, output=3.96, cached_input=0.044, cache_write=1.32
    )
    # prompt_tokens 1,500 = prompt_cache_hit_tokens 1,408 + prompt_cache_miss_tokens 92;
    # completion_tokens 620 of which 480 reasoning.
    assert_billed(
        answer,
        input_tokens=1500,
        output_tokens=620,
        cached_tokens=1408,
        # 92 missed at $1.32 + 1,408 hit at $0.044 + 620 output at $3.96
        cost=(92 * 1.32 + 1408 * 0.044 + 620 * 3.96) / 1_000_000,
    )


async def test_kimi_cache_hits_are_read_from_the_top_level_of_its_usage(fake):
    answer = await answer_to(fake, "kimi_chat_cached.json")

    assert answer.text == "def add(a, b):\n    return a + b\n"
    assert answer.model.price == Price(input=0.95, output=4.00, cached_input=0.16, cache_write=0.95)
    # prompt_tokens 2,310 of which cached_tokens 2,048 (beside prompt_tokens, not under
    # prompt_tokens_details); completion_tokens 415.
    assert_billed(
        answer,
        input_tokens=2310,
        output_tokens=415,
        cached_tokens=2048,
        # 262 uncached at $0.95 + 2,048 cached at $0.16 + 415 output at $4
        cost=(262 * 0.95 + 2048 * 0.16 + 415 * 4.00) / 1_000_000,
    )


async def test_a_streamed_kimi_answer_is_priced_from_the_usage_in_its_last_choice(fake):
    answer = await answer_to(fake, "kimi_stream_choice_usage.json", streamed=True)

    assert answer.text == "Adds two numbers."
    # The last chunk's choices[0].usage: prompt_tokens 1,336 of which 1,280 cached;
    # completion_tokens 231.
    assert_billed(
        answer,
        input_tokens=1336,
        output_tokens=231,
        cached_tokens=1280,
        # 56 uncached at $0.95 + 1,280 cached at $0.16 + 231 output at $4
        cost=(56 * 0.95 + 1280 * 0.16 + 231 * 4.00) / 1_000_000,
    )


async def test_a_streamed_anthropic_answer_is_priced_from_the_whole_turns_final_counts(fake):
    answer = await answer_to(fake, "anthropic_stream_server_tool.json", streamed=True)

    assert answer.text == "I'll check the weather. It is sunny."
    # message_start said input_tokens 2,679; a web search ran, and message_delta's cumulative
    # counts say 10,682 in all (besides 1,536 read from the cache), and 510 output.
    assert_billed(
        answer,
        input_tokens=10682 + 1536,
        output_tokens=510,
        cached_tokens=1536,
        # 10,682 at $2 + 1,536 read at $0.20 + 510 output at $10
        cost=(10682 * 2.00 + 1536 * 0.20 + 510 * 10.00) / 1_000_000,
    )
