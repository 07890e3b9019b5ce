"""Answers cut off by the output limit: recorded, never taken as whole, continued or re-asked."""

from __future__ import annotations

import json

import pytest
from fake_provider import Reply
from test_exactness import ask, journal_rows
from test_resume import orchestrate, start

from orchestrator import StructuredOutputError, TruncatedAnswerError
from orchestrator.llm.answers import CONTINUE_PROMPT, MAX_CONTINUATIONS
from orchestrator.llm.providers.base import ChatRequest, Message
from orchestrator.run.tasks import ProjectStatus, TaskStatus

SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "number"}},
    "required": ["score"],
    "additionalProperties": False,
}

# What each vendor says when max_tokens ran out.
VENDORS = [
    pytest.param("gpt-4o-mini", "length", id="openai"),
    pytest.param("claude-haiku-4-5", "max_tokens", id="anthropic"),
    pytest.param("gemini-2.5-flash", "MAX_TOKENS", id="gemini"),
    pytest.param("deepseek-v4-flash", "length", id="deepseek"),
]


def sent_limit(request) -> int:
    body = request.body
    return int(
        body.get("max_completion_tokens")
        or body.get("max_tokens")
        or body["generationConfig"]["maxOutputTokens"]
    )


@pytest.mark.parametrize(("model", "stop_reason"), VENDORS)
async def test_a_cut_off_answer_is_continued_and_joined(client, fake, model, stop_reason):
    fake.script(
        model,
        Reply(text="The first half, ", output_tokens=64, truncated=True),
        Reply(text="and the second half.", output_tokens=20),
    )

    answer = await client.complete(model, "Write two halves", max_tokens=64)

    assert answer.text == "The first half, and the second half."
    assert answer.paid_calls == 2
    assert answer.output_tokens == 84  # both parts are paid for and counted
    assert answer.notes == ("cut off at 64 output tokens; continued once",)
    continuation = fake.requests[-1]
    assert "The first half, " in continuation.prompt_text
    assert CONTINUE_PROMPT in continuation.prompt_text
    assert sent_limit(continuation) == 64


@pytest.mark.parametrize(("model", "stop_reason"), VENDORS)
async def test_each_vendors_stop_reason_is_recorded_with_the_answer(
    client, fake, model, stop_reason
):
    adapter = await client._adapter(client.catalog.resolve(model))  # the one the client calls
    request = ChatRequest(messages=(Message("user", "hi"),), max_tokens=32)
    fake.script(model, Reply(text="cut", truncated=True), Reply(text="whole"))

    cut = await adapter.complete(model, request)
    whole = await adapter.complete(model, request)

    assert (cut.stop_reason, cut.truncated) == (stop_reason, True)
    assert whole.truncated is False and whole.stop_reason not in (None, stop_reason)


async def test_a_continuation_that_reopens_the_open_code_block_does_not_close_it(client, fake):
    fake.script(
        "gpt-4o-mini",
        Reply(text="```python\ndef add(a, b):\n", truncated=True),
        Reply(text="```python\n    return a + b\n```\n"),
    )

    answer = await client.complete("gpt-4o-mini", "Write add")

    assert answer.text == "```python\ndef add(a, b):\n    return a + b\n```\n"


async def test_an_answer_still_cut_off_after_the_continuations_is_refused_with_its_cost(
    client, fake
):
    fake.script(
        "gpt-4o-mini",
        *[
            Reply(text=f"part {i} ", output_tokens=100, truncated=True)
            for i in range(MAX_CONTINUATIONS + 1)
        ],
    )

    with pytest.raises(TruncatedAnswerError, match="cut off at 100 output tokens") as caught:
        await client.complete("gpt-4o-mini", "Loop forever", max_tokens=100)

    assert fake.count() == MAX_CONTINUATIONS + 1  # and no more
    assert caught.value.spent_usd > 0  # every paid part is reported, none silently dropped
    assert caught.value.retryable is False


async def test_cut_off_json_is_asked_again_with_a_larger_limit(client, fake):
    fake.script(
        "gpt-4o-mini",
        Reply(text='{"sco', output_tokens=50, truncated=True),
        Reply(text=json.dumps({"score": 0.8})),
    )

    answer = await client.complete("gpt-4o-mini", "Grade", schema=SCHEMA, max_tokens=50)

    assert answer.parsed == {"score": 0.8}
    assert [sent_limit(r) for r in fake.requests] == [50, 200]
    assert CONTINUE_PROMPT not in fake.requests[-1].prompt_text  # asked afresh, not continued
    assert answer.notes == ("cut off at 50 output tokens; asked again with 200",)


async def test_cut_off_json_that_parses_is_still_not_taken_as_whole(client, fake):
    # A truncated array can close cleanly by chance; the stop reason, not the parse, decides.
    fake.script(
        "gpt-4o-mini",
        Reply(text=json.dumps({"score": 0.1}), truncated=True),
        Reply(text=json.dumps({"score": 0.9})),
    )

    answer = await client.complete("gpt-4o-mini", "Grade", schema=SCHEMA, max_tokens=50)

    assert answer.parsed == {"score": 0.9}


async def test_json_cut_off_at_the_models_own_limit_is_refused(client, fake):
    limit = client.catalog.resolve("gpt-4o-mini").max_output_tokens
    fake.script("gpt-4o-mini", Reply(text='{"sco', truncated=True))

    with pytest.raises(TruncatedAnswerError, match="the most this model can write"):
        await client.complete("gpt-4o-mini", "Grade", schema=SCHEMA, max_tokens=limit)

    assert fake.count() == 1
    assert not isinstance(TruncatedAnswerError("x", model="m", provider="p"), StructuredOutputError)


async def test_a_resume_replays_a_cut_off_verdict_instead_of_paying_again(gateway, fake):
    fake.script("gpt-4o-mini", *[Reply(text="more ", truncated=True)] * 3)
    with pytest.raises(TruncatedAnswerError) as first:
        await ask(gateway, "gpt-4o-mini", max_tokens=10)
    assert fake.count() == 3
    assert await journal_rows(gateway) == [("answer", first.value.spent_nanos, True)]

    await gateway.journal.load()  # as a resumed run does
    with pytest.raises(TruncatedAnswerError) as again:
        await ask(gateway, "gpt-4o-mini", max_tokens=10)

    assert fake.count() == 3
    assert str(again.value) == str(first.value)


async def test_a_task_whose_answer_was_cut_off_keeps_the_whole_answer_and_says_so(fake, llm):
    halves: dict[str, int] = {}

    def responder(request):
        reply = llm(request)
        text = request.prompt_text
        if "[docs]" in text and "Write a README section" in text and "You grade" not in text:
            if "You review" in text or "Revise your answer" in text:
                return reply
            if CONTINUE_PROMPT in text:
                return Reply(text=reply.text[40:])
            halves["docs"] = halves.get("docs", 0) + 1
            return Reply(text=reply.text[:40], truncated=True)
        return reply

    fake.responder = responder

    state = await orchestrate(fake, start)

    docs = state.results["docs"]
    assert halves["docs"] == 1
    assert docs.status is TaskStatus.COMPLETED
    assert docs.notes and "continued once" in docs.notes[0]
    assert docs.notes[0].startswith("generation (")
    assert state.status is ProjectStatus.SUCCESS
