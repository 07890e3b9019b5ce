"""The fake vendor server must satisfy the REAL SDKs with strict response validation.

If these tests break after an SDK upgrade, the fake has drifted from the wire format and every
test built on it is suspect.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
from fake_provider import FakeProvider, RecordedRequest, Reply
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import BaseModel

FAKE_PROVIDER_PY = Path(__file__).with_name("fake_provider.py")


class Plan(BaseModel):
    title: str
    steps: list[str]


PLAN = {"title": "t", "steps": ["a", "b"]}


@pytest.fixture
def fake():
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
async def oai(fake):
    client = openai.AsyncOpenAI(
        base_url=f"{fake.base_url}/v1",
        api_key="test",
        max_retries=0,
        timeout=5.0,
        _strict_response_validation=True,
    )
    yield client
    await client.close()


@pytest.fixture
async def ant(fake):
    client = anthropic.AsyncAnthropic(
        base_url=fake.base_url,
        api_key="test",
        max_retries=0,
        timeout=5.0,
        _strict_response_validation=True,
    )
    yield client
    await client.close()


def _gemini_client(base_url: str, http: httpx2.AsyncClient, **opts) -> genai.Client:
    options = types.HttpOptions(
        base_url=base_url,
        timeout=5000,
        retry_options=types.HttpRetryOptions(attempts=1),
        httpx_async_client=http,
        **opts,
    )
    return genai.Client(api_key="test", http_options=options)


@pytest.fixture
async def gem(fake):
    http = httpx2.AsyncClient()
    client = _gemini_client(fake.base_url, http, api_version="v1beta")
    yield client
    await client.aio.aclose()
    await http.aclose()


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -- OpenAI ---------------------------------------------------------------------------------
async def test_openai_text_and_usage(fake, oai):
    fake.script("gpt-4o-mini", Reply(text="hello", input_tokens=100, cached_tokens=40))
    r = await oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "be brief"}, *_user("say hello")],
    )
    assert r.choices[0].message.content == "hello"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (100, 1, 101)
    assert r.usage.prompt_tokens_details.cached_tokens == 40

    [req] = fake.requests
    assert (req.api, req.path, req.model) == ("openai", "/v1/chat/completions", "gpt-4o-mini")
    assert req.headers["authorization"] == "Bearer test"
    assert req.prompt_text == "be brief\nsay hello"
    assert not req.wants_json and req.schema is None


async def test_openai_structured_output_and_json_mode(fake, oai):
    fake.script("gpt-4o-mini", PLAN, json.dumps(PLAN))
    r = await oai.chat.completions.parse(
        model="gpt-4o-mini", messages=_user("plan"), response_format=Plan
    )
    assert r.choices[0].message.parsed == Plan(**PLAN)
    assert fake.requests[0].wants_json
    assert set(fake.requests[0].schema["properties"]) == {"title", "steps"}

    await oai.chat.completions.create(
        model="gpt-4o-mini", messages=_user("plan"), response_format={"type": "json_object"}
    )
    assert fake.requests[1].wants_json and fake.requests[1].schema is None


async def test_openai_bare_host_and_sub_path_base_urls(fake, oai):
    for base, path in [
        (fake.base_url, "/chat/completions"),
        (f"{fake.base_url}/custom/v1", "/custom/v1/chat/completions"),
    ]:
        async with openai.AsyncOpenAI(
            base_url=base, api_key="k", max_retries=0, _strict_response_validation=True
        ) as client:
            r = await client.chat.completions.create(model="local", messages=_user("x"))
        assert r.choices[0].message.content == "ok"
        assert fake.requests[-1].path == path
    models = await oai.models.list()
    assert [m.id for m in models.data] == ["local"]


async def test_openai_errors_map_to_sdk_exceptions(fake, oai):
    with pytest.raises(openai.RateLimitError) as exc:
        await oai.chat.completions.create(model="err-429-ra1", messages=_user("x"))
    assert exc.value.response.headers["retry-after"] == "1"
    assert exc.value.body["code"] == "rate_limit_exceeded"

    cases = [
        ("err-400", openai.BadRequestError),
        ("err-404", openai.NotFoundError),
        ("err-500", openai.InternalServerError),
        ("err-503", openai.InternalServerError),
        ("err-529", openai.InternalServerError),
    ]
    for model, cls in cases:
        with pytest.raises(cls) as exc:
            await oai.chat.completions.create(model=model, messages=_user("x"))
        assert exc.value.status_code == int(model[4:])

    bad = oai.with_options(api_key="bad-key")
    with pytest.raises(openai.AuthenticationError):
        await bad.chat.completions.create(model="gpt-4o-mini", messages=_user("x"))
    assert fake.count("openai") == 7


# -- Anthropic ------------------------------------------------------------------------------
async def test_anthropic_text_and_usage(fake, ant):
    fake.script("claude-sonnet-4-6", Reply(text="hi there", output_tokens=7, cached_tokens=30))
    m = await ant.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=50,
        system=[{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
    )
    assert m.content[0].type == "text" and m.content[0].text == "hi there"
    assert m.stop_reason == "end_turn"
    assert m.usage.input_tokens == 2  # len("sys\nhello") // 4
    assert m.usage.output_tokens == 7
    assert m.usage.cache_read_input_tokens == 30

    [req] = fake.requests
    assert (req.api, req.path) == ("anthropic", "/v1/messages")
    assert req.headers["authorization"] == "Bearer test"
    assert "anthropic-version" in req.headers
    assert req.prompt_text == "sys\nhello"


async def test_anthropic_forced_tool_returns_tool_use(fake, ant):
    schema = Plan.model_json_schema()
    tool = {"name": "emit", "description": "emit the plan", "input_schema": schema}
    fake.script("claude-haiku-4-5", PLAN, "not json")
    kwargs = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": _user("plan"),
        "tools": [tool],
        "tool_choice": {"type": "tool", "name": "emit"},
    }

    m = await ant.messages.create(**kwargs)
    assert m.stop_reason == "tool_use"
    [block] = m.content
    assert (block.type, block.name, block.input) == ("tool_use", "emit", PLAN)
    assert fake.requests[0].schema == schema and fake.requests[0].wants_json

    m = await ant.messages.create(**kwargs)
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == "not json"


async def test_anthropic_output_config_structured_output(fake, ant):
    fake.script("claude-sonnet-4-6", PLAN)
    m = await ant.messages.parse(
        model="claude-sonnet-4-6", max_tokens=100, messages=_user("plan"), output_format=Plan
    )
    assert m.parsed_output == Plan(**PLAN)
    assert set(fake.requests[0].schema["properties"]) == {"title", "steps"}


async def test_anthropic_errors_map_to_sdk_exceptions(fake, ant):
    cases = [
        ("err-400", anthropic.BadRequestError),
        ("err-401", anthropic.AuthenticationError),
        ("err-404", anthropic.NotFoundError),
        ("err-429", anthropic.RateLimitError),
        ("err-500", anthropic.InternalServerError),
        ("err-503", anthropic.ServiceUnavailableError),
        ("err-529", anthropic.OverloadedError),
    ]
    for model, cls in cases:
        with pytest.raises(cls) as exc:
            await ant.messages.create(model=model, max_tokens=5, messages=_user("x"))
        assert exc.value.status_code == int(model[4:])
    assert issubclass(anthropic.OverloadedError, anthropic.InternalServerError)

    with pytest.raises(anthropic.RateLimitError) as exc:
        await ant.messages.create(model="err-429-ra2", max_tokens=5, messages=_user("x"))
    assert exc.value.response.headers["retry-after"] == "2"
    assert exc.value.body["error"]["type"] == "rate_limit_error"


# -- Gemini ---------------------------------------------------------------------------------
async def test_gemini_text_usage_and_json_schema(fake, gem):
    fake.script("gemini-2.5-flash", Reply(text="howdy", input_tokens=50, cached_tokens=20))
    r = await gem.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="hi",
        config=types.GenerateContentConfig(system_instruction="be nice"),
    )
    assert r.text == "howdy"
    usage = r.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count) == (50, 1)
    assert (usage.total_token_count, usage.cached_content_token_count) == (51, 20)
    assert r.model_version == "gemini-2.5-flash"
    req = fake.requests[0]
    assert req.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert req.headers["x-goog-api-key"] == "test"
    assert req.prompt_text == "be nice\nhi"

    fake.script("gemini-2.5-flash", PLAN)
    schema = Plan.model_json_schema()
    r = await gem.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="plan",
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema=schema
        ),
    )
    assert r.parsed == PLAN
    assert fake.requests[1].schema == schema and fake.requests[1].wants_json


async def test_gemini_default_api_version_is_routed(fake):
    async with httpx2.AsyncClient() as http:
        client = _gemini_client(fake.base_url, http)
        r = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
        await client.aio.aclose()
    assert r.text == "ok"
    assert fake.requests[0].path.startswith("/v1/models/")  # google-genai 3.x defaults to v1


async def test_gemini_errors_map_to_sdk_exceptions(fake, gem):
    cases = [
        ("err-429", genai_errors.ClientError, "RESOURCE_EXHAUSTED"),
        ("err-401", genai_errors.ClientError, "UNAUTHENTICATED"),
        ("err-500", genai_errors.ServerError, "INTERNAL"),
        ("err-503", genai_errors.ServerError, "UNAVAILABLE"),
    ]
    for model, cls, status in cases:
        with pytest.raises(cls) as exc:
            await gem.aio.models.generate_content(model=model, contents="x")
        assert (exc.value.code, exc.value.status) == (int(model[4:]), status)


# -- scripting, fault injection, lifecycle -------------------------------------------------
async def test_reply_selection_order_and_counts(fake, oai, ant):
    def responder(req: RecordedRequest) -> str:
        return f"echo:{req.prompt_text}"

    fake.responder = responder
    fake.script("m1", "scripted")
    fake.set_down("m1")
    with pytest.raises(openai.InternalServerError) as exc:
        await oai.chat.completions.create(model="m1", messages=_user("x"))
    assert exc.value.status_code == 503
    fake.set_down("m1", False)

    async def ask(model: str) -> str:
        r = await oai.chat.completions.create(model=model, messages=_user("x"))
        return r.choices[0].message.content

    assert await ask("m1") == "scripted"  # the queue survived the outage
    assert await ask("m1") == "echo:x"
    with pytest.raises(openai.RateLimitError):  # fault names win over the responder
        await ask("err-429")
    fake.responder = None
    assert await ask("m1") == "ok"
    await ant.messages.create(model="m1", max_tokens=5, messages=_user("x"))

    assert fake.count() == 6
    assert fake.count(model="m1") == 5
    assert fake.count("openai", "m1") == 4
    assert fake.count("anthropic") == 1
    assert [r.status for r in fake.requests] == [503, 200, 200, 429, 200, 200]
    fake.script("m1", "left over")
    fake.clear()
    assert fake.count() == 0 and await ask("m1") == "ok"


async def test_responder_exception_becomes_500(fake, oai):
    fake.responder = lambda req: 1 / 0
    with pytest.raises(openai.InternalServerError):
        await oai.chat.completions.create(model="m", messages=_user("x"))
    assert isinstance(fake.responder_errors[0], ZeroDivisionError)


async def test_slow_model_times_out_and_stop_does_not_hang(fake, oai):
    r = await oai.chat.completions.create(model="slow-0.2", messages=_user("x"))
    assert r.choices[0].message.content == "ok"

    with pytest.raises(openai.APITimeoutError):
        await oai.with_options(timeout=0.3).chat.completions.create(
            model="slow-30", messages=_user("x")
        )
    assert fake.count(model="slow-30") == 1  # recorded on arrival, not on answer
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 1.0


def test_sync_use_and_bad_requests(fake):
    def post(path: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        req = urllib.request.Request(fake.base_url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    body = json.dumps({"model": "m", "messages": _user("x")}).encode()
    assert post("/v1/chat/completions", body, {"x-api-key": "k"})[0] == 200
    status, err = post("/v1/messages", body, {})
    assert status == 401 and err["error"]["type"] == "authentication_error"
    assert post("/v1/chat/completions", b"{nope", {"x-api-key": "k"})[0] == 400
    assert post("/v2/unknown", body, {"x-api-key": "k"})[0] == 404
    # Streaming is served in every vendor's format; other Gemini methods fail loudly.
    assert post("/v1beta/models/m:countTokens", body, {"x-goog-api-key": "k"})[0] == 400


def test_standalone_process_serves_and_logs(tmp_path):
    log = tmp_path / "requests.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_PROVIDER_PY), "--log", str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        with openai.OpenAI(base_url=f"{base_url}/v1", api_key="k", max_retries=0) as client:
            r = client.chat.completions.create(model="cli-model", messages=_user("x"))
        assert r.choices[0].message.content == "ok"
        [line] = log.read_text().splitlines()
        entry = json.loads(line)
        assert (entry["api"], entry["model"], entry["status"]) == ("openai", "cli-model", 200)
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0
        proc.stdout.close()
