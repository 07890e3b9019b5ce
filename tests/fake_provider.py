"""Fake OpenAI / Anthropic / Gemini HTTP server for tests, standard library only.

The real SDKs use httpx2, which transport-level mocks cannot intercept, so tests talk real HTTP to
this server instead. It runs in a daemon thread, so sync tests, async tests (any event loop) and
subprocesses can all share it. Wire formats follow /work/shared/providers.md.

In-process::

    with FakeProvider() as fake:
        fake.script("gpt-4o-mini", "first answer", Reply(status=429, headers={"retry-after": "1"}))
        client = AsyncOpenAI(base_url=f"{fake.base_url}/v1", api_key="test", max_retries=0)

Standalone (prints the base URL on the first stdout line, serves until killed)::

    python tests/fake_provider.py [--port N] [--log requests.jsonl] [--responder pkg.mod:func]

Fault injection by model name: ``err-NNN`` (that HTTP status every time), ``err-429-raN``
(429 with ``retry-after: N``), ``slow-N`` (sleep N seconds, float allowed, then answer "ok").
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["FakeProvider", "RecordedRequest", "Reply"]

_OPENAI_RE = re.compile(r"^(?:/.*)?/chat/completions$")
_ANTHROPIC_RE = re.compile(r"^(?:/.*)?/v1/messages$")
_GEMINI_RE = re.compile(
    r"^(?:/.*)?/(?P<version>v[0-9][a-z0-9]*)/models/(?P<model>[^/]+):(?P<method>\w+)$"
)
_MODELS_RE = re.compile(r"^(?:/.*)?/models$")
_ERR_RE = re.compile(r"^err-(?P<status>\d{3})(?:-ra(?P<retry_after>\d+(?:\.\d+)?))?$")
_SLOW_RE = re.compile(r"^slow-(?P<seconds>\d+(?:\.\d+)?)$")

_OPENAI_ERRORS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass
class Reply:
    text: str = "ok"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int = 0
    # Sent as it is (text/html) instead of a vendor body: a proxy's error page, say.
    raw_body: str | None = None
    # Cut off by the output limit: finish_reason "length" / stop_reason "max_tokens" /
    # finishReason "MAX_TOKENS", as a real server says when max_tokens ran out.
    truncated: bool = False
    # The model the body says answered (default: the one requested), as a server that serves
    # another model than the one asked for says.
    answered_by: str | None = None
    # A streamed answer (stream=true, OpenAI format) comes a word at a time, this many seconds
    # apart, as a slow model generates.
    stream_interval: float = 0.0
    # Thinking tokens, billed as output on top of ``output_tokens`` (the answer's own): OpenAI
    # counts them inside completion_tokens (and says how many in completion_tokens_details),
    # Anthropic inside output_tokens, Gemini apart from the candidates (thoughtsTokenCount).
    reasoning_tokens: int = 0
    # Prompt tokens written to Anthropic's cache (cache_creation_input_tokens; the others
    # report none).
    cache_write_tokens: int = 0
    # A vendor's recorded answer, sent as it is instead of one built from the fields above:
    # ``body`` for a whole response, ``chunks`` for a stream (each one a ``data:`` line).
    body: dict | None = None
    chunks: list[dict] | None = None


ReplyLike = Reply | str | dict | list


def _as_reply(value: ReplyLike) -> Reply:
    if isinstance(value, Reply):
        return value
    if is_dataclass(value) and type(value).__name__ == "Reply":
        # Standalone mode runs this file as __main__, so a --responder module that imports
        # fake_provider builds Reply objects of a different (but identical) class.
        return Reply(**{f.name: getattr(value, f.name) for f in fields(Reply)})
    if isinstance(value, str):
        return Reply(text=value)
    if isinstance(value, dict | list):
        # Structured-output tests mostly want "answer with this JSON"; save them a json.dumps.
        return Reply(text=json.dumps(value))
    raise TypeError(f"cannot turn {type(value).__name__} into a Reply")


def _collect_text(value: Any, out: list[str]) -> None:
    """Gather every string under text/content/parts keys (messages, blocks, tool results)."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            _collect_text(item, out)
    elif isinstance(value, dict):
        for key in ("text", "content", "parts"):
            if key in value:
                _collect_text(value[key], out)


@dataclass
class RecordedRequest:
    api: str
    path: str
    model: str
    headers: dict[str, str]
    body: dict
    query: dict[str, str] = field(default_factory=dict)
    # Wall-clock so a --log file read by another process can measure gaps (e.g. retry-after).
    received_at: float = field(default_factory=time.time)
    status: int = 0  # status of the reply that was chosen; 0 until chosen

    @property
    def prompt_text(self) -> str:
        out: list[str] = []
        if self.api == "openai":
            _collect_text(self.body.get("messages", []), out)
        elif self.api == "anthropic":
            _collect_text(self.body.get("system", []), out)
            _collect_text(self.body.get("messages", []), out)
        elif self.api == "gemini":
            sys_instr = self.body.get("systemInstruction") or self.body.get("system_instruction")
            _collect_text(sys_instr or [], out)
            _collect_text(self.body.get("contents", []), out)
        return "\n".join(out)

    @property
    def forced_tool(self) -> str | None:
        """Anthropic tool name forced by tool_choice={"type":"tool","name":X}, else None."""
        choice = self.body.get("tool_choice") if self.api == "anthropic" else None
        if isinstance(choice, dict) and choice.get("type") == "tool":
            return choice.get("name")
        return None

    @property
    def schema(self) -> dict | None:
        body = self.body
        if self.api == "openai":
            fmt = body.get("response_format") or {}
            if fmt.get("type") == "json_schema":
                return (fmt.get("json_schema") or {}).get("schema")
        elif self.api == "anthropic":
            fmt = (body.get("output_config") or {}).get("format") or {}
            if fmt.get("schema") is not None:
                return fmt["schema"]
            name = self.forced_tool
            for tool in body.get("tools") or []:
                if name is not None and tool.get("name") == name:
                    return tool.get("input_schema")
        elif self.api == "gemini":
            cfg = self._gemini_config()
            for key in ("responseJsonSchema", "response_json_schema"):
                if cfg.get(key) is not None:
                    return cfg[key]
            for key in ("responseSchema", "response_schema"):
                if cfg.get(key) is not None:
                    return cfg[key]
        return None

    @property
    def wants_json(self) -> bool:
        if self.schema is not None:
            return True
        if self.api == "openai":
            return (self.body.get("response_format") or {}).get("type") == "json_object"
        if self.api == "gemini":
            cfg = self._gemini_config()
            mime = cfg.get("responseMimeType") or cfg.get("response_mime_type")
            return mime == "application/json"
        return False

    def _gemini_config(self) -> dict:
        return self.body.get("generationConfig") or self.body.get("generation_config") or {}

    def to_json(self) -> dict:
        return asdict(self)


class FakeProvider:
    """Reply choice per request: down -> 503; queued script; err-*/slow-* model name;
    ``responder(rec)``; else "ok". A request is appended to ``requests`` (and the log) once its
    reply is chosen but before any delay, so the responder sees only earlier requests and a
    timed-out request is still counted.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        responder: Callable[[RecordedRequest], ReplyLike] | None = None,
        log_path: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.base_url = ""
        self.requests: list[RecordedRequest] = []
        self.responder = responder
        self.log_path = log_path
        # Exceptions raised by the responder; the client only sees a 500, so keep the real cause.
        self.responder_errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Reply]] = {}
        self._down: set[str] = set()
        self._seen_models: dict[str, None] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeProvider:
        if self._server is not None:
            raise RuntimeError("FakeProvider already started")
        self._stopping.clear()
        self._server = _Server((self.host, self.port), _Handler, self)
        self.port = self._server.server_address[1]
        self.base_url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # keeps stop() snappy
            name=f"fake-provider-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping on a delay
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def __enter__(self) -> FakeProvider:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting -------------------------------------------------------------------------
    def script(self, model: str, *replies: ReplyLike) -> None:
        with self._lock:
            self._scripts.setdefault(model, []).extend(_as_reply(r) for r in replies)
            self._seen_models.setdefault(model, None)

    def set_down(self, model: str, down: bool = True) -> None:
        with self._lock:
            if down:
                self._down.add(model)
            else:
                self._down.discard(model)

    def count(self, api: str | None = None, model: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (api is None or r.api == api) and (model is None or r.model == model)
            )

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._scripts.clear()
            self.responder_errors.clear()

    # -- request handling (called from handler threads) -----------------------------------
    def _record_and_choose(self, rec: RecordedRequest, authorized: bool) -> Reply:
        with self._lock:
            self._seen_models.setdefault(rec.model, None)
            if not authorized:
                reply = Reply(text="invalid API key", status=401)
            elif rec.model in self._down:
                reply = Reply(text=f"{rec.model} is down", status=503)
            elif self._scripts.get(rec.model):
                reply = self._scripts[rec.model].pop(0)
            else:
                reply = None
        if reply is None:
            reply = _fault_for_model(rec.model)
        if reply is None and self.responder is not None:
            try:
                reply = _as_reply(self.responder(rec))
            except Exception as exc:
                with self._lock:
                    self.responder_errors.append(exc)
                reply = Reply(text=f"responder raised {exc!r}", status=500)
        if reply is None:
            reply = Reply()
        rec.status = reply.status
        with self._lock:
            self.requests.append(rec)
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec.to_json()) + "\n")
        return reply

    def _models_listing(self) -> list[str]:
        with self._lock:
            return list(self._seen_models)


def _fault_for_model(model: str) -> Reply | None:
    if m := _ERR_RE.match(model):
        headers = {"retry-after": m["retry_after"]} if m["retry_after"] else {}
        status = int(m["status"])
        return Reply(text=f"injected {status} for {model}", status=status, headers=headers)
    if m := _SLOW_RE.match(model):
        return Reply(delay=float(m["seconds"]))
    return None


# -- response bodies ------------------------------------------------------------------------
def _usage(rec: RecordedRequest, reply: Reply) -> tuple[int, int]:
    in_tok = reply.input_tokens
    if in_tok is None:
        in_tok = max(1, len(rec.prompt_text) // 4)
    out_tok = reply.output_tokens
    if out_tok is None:
        out_tok = max(1, len(reply.text) // 4)
    return in_tok, out_tok


def _openai_body(rec: RecordedRequest, reply: Reply, seq: int) -> dict:
    in_tok, out_tok = _usage(rec, reply)
    out_tok += reply.reasoning_tokens
    return {
        "id": f"chatcmpl-fake{seq}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.answered_by or rec.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": None},
                "finish_reason": "length" if reply.truncated else "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": in_tok,
            "completion_tokens": out_tok,
            "total_tokens": in_tok + out_tok,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
        },
    }


def _openai_chunks(rec: RecordedRequest, reply: Reply, seq: int) -> list[dict]:
    """A streamed chat completion: the text a word at a time, the finish reason, then usage
    (when the request asked for it with stream_options.include_usage)."""
    in_tok, out_tok = _usage(rec, reply)
    out_tok += reply.reasoning_tokens
    base = {
        "id": f"chatcmpl-fake{seq}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": reply.answered_by or rec.model,
    }
    words = re.findall(r"\S+\s*|\s+", reply.text) or [""]
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
        for word in words
    ]
    finish = "length" if reply.truncated else "stop"
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if (rec.body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": in_tok, "completion_tokens": out_tok,
                 "total_tokens": in_tok + out_tok,
                 "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
                 "completion_tokens_details": {
                     "reasoning_tokens": reply.reasoning_tokens}}  # fmt: skip
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks


def api_events(chunk: dict) -> bool:
    """Anthropic names each event's type on a line of its own; the others do not."""
    return chunk.get("type") in _ANTHROPIC_EVENT_TYPES


_ANTHROPIC_EVENT_TYPES = {"message_start", "content_block_start", "content_block_delta",
                          "content_block_stop", "message_delta", "message_stop"}  # fmt: skip


def _gemini_chunks(rec: RecordedRequest, reply: Reply, seq: int) -> list[dict]:
    """A streamed generateContent: the text a word at a time, then the finish reason and the
    usage in the last piece."""
    whole = _gemini_body(rec, reply, seq)
    words = re.findall(r"\S+\s*|\s+", reply.text) or [""]
    pieces = []
    for number, word in enumerate(words):
        content = {"role": "model", "parts": [{"text": word}]}
        piece = {
            "candidates": [{"content": content, "index": 0}],
            "modelVersion": whole["modelVersion"],
            "responseId": whole["responseId"],
        }
        if number == len(words) - 1:
            piece["candidates"][0]["finishReason"] = whole["candidates"][0]["finishReason"]
            piece["usageMetadata"] = whole["usageMetadata"]
        pieces.append(piece)
    return pieces


def _anthropic_events(rec: RecordedRequest, reply: Reply, seq: int) -> list[dict]:
    """A streamed message: its start (with the input usage), the text a word at a time, then
    the stop reason with the output usage."""
    in_tok, out_tok = _usage(rec, reply)
    out_tok += reply.reasoning_tokens
    usage = {"input_tokens": in_tok, "output_tokens": 1,
             "cache_creation_input_tokens": reply.cache_write_tokens,
             "cache_read_input_tokens": reply.cached_tokens}  # fmt: skip
    message = {"id": f"msg_fake{seq}", "type": "message", "role": "assistant",
               "model": reply.answered_by or rec.model, "content": [], "stop_reason": None,
               "stop_sequence": None, "usage": usage}  # fmt: skip
    words = re.findall(r"\S+\s*|\s+", reply.text) or [""]
    stop = "max_tokens" if reply.truncated else "end_turn"
    return [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
          for w in words),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
         "usage": {"output_tokens": out_tok}},
        {"type": "message_stop"},
    ]  # fmt: skip


def _anthropic_body(rec: RecordedRequest, reply: Reply, seq: int) -> dict:
    in_tok, out_tok = _usage(rec, reply)
    out_tok += reply.reasoning_tokens
    content: list[dict] = [{"type": "text", "text": reply.text}]
    stop_reason = "max_tokens" if reply.truncated else "end_turn"
    if rec.forced_tool is not None:
        try:
            tool_input = json.loads(reply.text)
        except ValueError:
            tool_input = None
        # A tool_use input must be an object; anything else falls back to a text block so the
        # caller's "model ignored the tool" path gets exercised instead of an SDK parse error.
        if isinstance(tool_input, dict):
            content = [
                {
                    "type": "tool_use",
                    "id": f"toolu_fake{seq}",
                    "name": rec.forced_tool,
                    "input": tool_input,
                }
            ]
            stop_reason = "tool_use"
    return {
        "id": f"msg_fake{seq}",
        "type": "message",
        "role": "assistant",
        "model": reply.answered_by or rec.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": in_tok,
            "output_tokens": out_tok,
            "cache_creation_input_tokens": reply.cache_write_tokens,
            "cache_read_input_tokens": reply.cached_tokens,
        },
    }


def _gemini_body(rec: RecordedRequest, reply: Reply, seq: int) -> dict:
    in_tok, out_tok = _usage(rec, reply)
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": reply.text}]},
                "finishReason": "MAX_TOKENS" if reply.truncated else "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": in_tok,
            "candidatesTokenCount": out_tok,
            "totalTokenCount": in_tok + out_tok + reply.reasoning_tokens,
            "cachedContentTokenCount": reply.cached_tokens,
            "thoughtsTokenCount": reply.reasoning_tokens,
        },
        "modelVersion": reply.answered_by or rec.model,
        "responseId": f"fake{seq}",
    }


def _error_body(api: str, status: int, message: str) -> dict:
    if api == "anthropic":
        err_type = _ANTHROPIC_ERRORS.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        return {"type": "error", "error": {"type": err_type, "message": message}}
    if api == "gemini":
        fallback = "UNAVAILABLE" if status >= 500 else "FAILED_PRECONDITION"
        return {
            "error": {
                "code": status,
                "message": message,
                "status": _GEMINI_STATUSES.get(status, fallback),
            }
        }
    err_type, code = _OPENAI_ERRORS.get(status, ("server_error", None))
    return {"error": {"message": message, "type": err_type, "code": code, "param": None}}


# -- HTTP plumbing --------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    # Tests fire bursts of concurrent calls; the default backlog of 5 makes the kernel drop SYNs
    # and the client stalls for a second on the retransmit.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, fake: FakeProvider) -> None:
        self.fake = fake
        self.seq = 0
        self.seq_lock = threading.Lock()
        super().__init__(address, handler)

    def next_seq(self) -> int:
        with self.seq_lock:
            self.seq += 1
            return self.seq

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return  # clients that time out and hang up are expected in timeout tests
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0 closes every connection after one response. With keep-alive, pooled SDK
    # connections would keep being served by handler threads after stop(), so a "server gone"
    # test would still get answers.
    protocol_version = "HTTP/1.0"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if not _MODELS_RE.match(path):
            self._send_json(404, _error_body("openai", 404, f"no route for GET {path}"))
            return
        models = self.server.fake._models_listing()
        if "anthropic-version" in {k.lower() for k in self.headers}:
            data = [
                {
                    "type": "model",
                    "id": m,
                    "display_name": m,
                    "created_at": "2025-01-01T00:00:00Z",
                    "lifecycle": "active",
                }
                for m in models
            ]
            body = {
                "data": data,
                "has_more": False,
                "first_id": models[0] if models else None,
                "last_id": models[-1] if models else None,
            }
        else:
            body = {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in models
                ],
            }
        self._send_json(200, body)

    def do_POST(self) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        path = split.path
        headers = {k.lower(): v for k, v in self.headers.items()}
        raw = self._read_body()

        gemini = _GEMINI_RE.match(path)
        if gemini:
            api, model = "gemini", gemini["model"]
        elif _ANTHROPIC_RE.match(path):
            api, model = "anthropic", ""
        elif _OPENAI_RE.match(path):
            api, model = "openai", ""
        else:
            self._send_json(404, _error_body("openai", 404, f"no route for POST {path}"))
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("request body must be a JSON object")
        except ValueError as exc:
            self._send_json(400, _error_body(api, 400, f"invalid JSON body: {exc}"))
            return
        if api != "gemini":
            model = str(body.get("model", ""))
        gemini_streams = bool(gemini) and gemini["method"] == "streamGenerateContent"
        streamed = gemini_streams or (bool(body.get("stream")) and api in ("openai", "anthropic"))
        if (body.get("stream") and not streamed) or (
            gemini and gemini["method"] not in ("generateContent", "streamGenerateContent")
        ):
            # Streaming (and other Gemini methods) are deliberately unsupported: fail loudly
            # rather than return a body the SDK would misparse.
            what = gemini["method"] if gemini else "stream=true"
            self._send_json(400, _error_body(api, 400, f"fake provider does not support {what}"))
            return

        query = dict(parse_qsl(split.query))
        rec = RecordedRequest(
            api=api, path=path, model=model, headers=headers, body=body, query=query
        )
        reply = fake._record_and_choose(rec, _authorized(headers, query))
        if reply.delay > 0 and fake._stopping.wait(reply.delay):
            return  # server stopping: drop the connection instead of answering late

        seq = self.server.next_seq()
        if reply.raw_body is not None:
            self._send(reply.status, reply.raw_body.encode(), "text/html", reply.headers)
            return
        if reply.status == 200 and streamed:
            events = {"openai": _openai_chunks, "anthropic": _anthropic_events}
            chunks = reply.chunks or events.get(api, _gemini_chunks)(rec, reply, seq)
            self._send_stream(chunks, reply.stream_interval, fake, done=api == "openai")
            return
        if reply.status != 200:
            payload = _error_body(api, reply.status, reply.text)
        elif reply.body is not None:
            payload = reply.body
        elif api == "openai":
            payload = _openai_body(rec, reply, seq)
        elif api == "anthropic":
            payload = _anthropic_body(rec, reply, seq)
        else:
            payload = _gemini_body(rec, reply, seq)
        self._send_json(reply.status, payload, reply.headers)

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_stream(
        self, chunks: list[dict], interval: float, fake: FakeProvider, *, done: bool
    ) -> None:
        """Server-sent events: one ``data:`` line a chunk (after an ``event:`` line naming its
        type, as Anthropic streams), then ``[DONE]`` as OpenAI ends."""
        try:
            self.send_response(200)
            # HTTP/1.0: the body ends when the connection closes, after [DONE].
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for number, chunk in enumerate(chunks):
                if number and interval > 0 and fake._stopping.wait(interval):
                    return
                named = f"event: {chunk['type']}\n" if api_events(chunk) else ""
                self._write_chunk(f"{named}data: {json.dumps(chunk)}\n\n".encode())
            if done:
                self._write_chunk(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _send_json(self, status: int, payload: dict, extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", extra)

    def _send(
        self, status: int, data: bytes, content_type: str, extra: dict[str, str] | None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


def _authorized(headers: dict[str, str], query: dict[str, str]) -> bool:
    auth = headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    # google-genai authenticates with x-goog-api-key (older clients used ?key=).
    key = key or headers.get("x-api-key") or headers.get("x-goog-api-key") or query.get("key", "")
    return bool(key) and key != "bad-key"


# -- standalone mode ------------------------------------------------------------------------
def _load_responder(spec: str) -> Callable[[RecordedRequest], ReplyLike]:
    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name), attr or "responder")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--log", help="append every request as one JSON line to this file")
    parser.add_argument(
        "--responder", help="MODULE:FUNC called as responder(RecordedRequest) -> Reply | str"
    )
    args = parser.parse_args(argv)

    responder = _load_responder(args.responder) if args.responder else None
    fake = FakeProvider(args.host, args.port, responder=responder, log_path=args.log)
    # SIGTERM (subprocess.terminate) should shut down cleanly, like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fake.start()
    print(fake.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
