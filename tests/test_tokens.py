"""How many tokens a text is, as the window checks, the context trimming, the forecast and the
books count them: one estimator, and a run on an 8k-token model that it keeps usable."""

from __future__ import annotations

import asyncio
import hashlib
import json
import textwrap
import urllib.request

import pytest
from conftest import PROJECT_ROOT
from scripted_llm import ScriptedLLM
from test_resume import FAST

from orchestrator import Budget, Orchestrator, UnifiedClient
from orchestrator.llm.context_window import prompt_token_bound, prompt_token_estimate
from orchestrator.llm.local import DEFAULT_CONTEXT, LocalModel, embedded_available
from orchestrator.llm.providers.base import ChatRequest, Message
from orchestrator.run.tasks import Task, TaskStatus, TaskType
from orchestrator.task.dependency_context import trim
from orchestrator.text.tokens import high_tokens, token_bound, typical_tokens

CODE = (PROJECT_ROOT / "orchestrator" / "task" / "runner.py").read_text(encoding="utf-8")
PROSE = (PROJECT_ROOT / "docs" / "how-a-run-works.md").read_text(encoding="utf-8")
# Texts a prompt may carry, from the kindest to a tokenizer to the hardest.
SAMPLES = {
    "code": CODE,
    "prose": PROSE,
    "json": (PROJECT_ROOT / "orchestrator" / "data" / "catalog.schema.json").read_text("utf-8"),
    "numbers": "\n".join(f"{n},{n * 7919 % 100003},{n / 7:.6f}" for n in range(400)),
    "hashes": "\n".join(hashlib.sha256(str(n).encode()).hexdigest() for n in range(100)),
    "punctuation": "})]; <=> != -> :: ** && || ${x} @@ #! " * 100,
    "indentation": "".join("\n" + "\t" * (n % 7) + " " * (n % 13) + "x" for n in range(500)),
    "accents": "Le garçon déjà vu: naïve façade, über Straße, año, élève. " * 60,
    "cyrillic": "Функция возвращает значение, если программа работает правильно. " * 60,
    "chinese": "这个函数返回列表中每个值的总和，并检查输入是否正确。" * 80,
    "japanese": "この関数はリストの値を合計して返します。入力を確認してください。" * 80,
    "emoji": "done ✅ failed ❌ 🚀 shipped 🎉 " * 150,
}


def test_the_bound_for_money_is_a_token_a_byte():
    assert token_bound("abc") == 3
    assert token_bound("é") == 2 and token_bound("日") == 3 and token_bound("🚀") == 4
    assert token_bound("") == high_tokens("") == typical_tokens("") == 0


@pytest.mark.parametrize("kind", SAMPLES)
def test_the_window_estimate_never_passes_the_bound_for_money(kind):
    assert 0 < high_tokens(SAMPLES[kind]) <= token_bound(SAMPLES[kind])


def test_the_window_estimate_of_code_and_prose_is_far_under_a_token_a_byte():
    # What the window checks counted before: a byte a token, three or four times too many.
    assert high_tokens(CODE) < 0.5 * token_bound(CODE)
    assert high_tokens(PROSE) < 0.5 * token_bound(PROSE)


def test_what_tokenizers_split_apart_counts_a_token_each():
    assert high_tokens("1234567890") == 10  # digits, one by one in several tokenizers
    assert high_tokens("(){}[]") == 6
    assert high_tokens("🚀") == 4  # a character no vocabulary holds: its bytes
    assert high_tokens("xqzvkpwb") == 8  # no vowel: letters about one by one
    assert high_tokens("3fa9c0e1") == 8  # letters among digits (a hash, a key): one by one
    assert high_tokens("configuration") == 4  # a word: a token for every four letters begun
    assert high_tokens(" configuration") == 4  # with the space before it


def test_the_typical_estimate_is_four_characters_a_token():
    assert typical_tokens("abcd") == 1 and typical_tokens("abcde") == 2
    assert typical_tokens(CODE) == -(-len(CODE) // 4)


def test_a_request_is_held_to_the_window_by_its_estimate_and_priced_by_its_bound():
    request = ChatRequest(messages=(Message("user", CODE),), max_tokens=1, system="Be brief.")
    margins = 16 * 2 + 512
    assert prompt_token_bound(request) == token_bound(CODE) + token_bound("Be brief.") + margins
    assert prompt_token_estimate(request) == high_tokens(CODE) + high_tokens("Be brief.") + margins


@pytest.mark.parametrize("limit", [50, 700, 3000])
def test_a_dependency_output_is_trimmed_in_the_middle_to_its_share_of_tokens(limit):
    trimmed = trim(CODE, limit)

    assert high_tokens(trimmed) <= limit
    assert high_tokens(trimmed) > limit * 0.8  # the share is used, not thrown away
    head, note, tail = trimmed.partition(" characters omitted ...]\n")
    assert note and CODE.startswith(head.rpartition("\n[... ")[0]) and CODE.endswith(tail)
    assert trim(PROSE[:100], limit) == PROSE[:100]  # what fits is kept whole


# Three models of the embedded model's window (``LocalModel``: 8,192 tokens) at the fake, so a
# task has an author, a critic and an evaluator; each may write as much as a code task asks.
SMALL_WINDOW_MODELS = ("small-author", "small-critic", "small-grader")


def small_window_catalog(directory, base_url):
    models = "".join(
        f"""
          - id: {name}
            provider: local
            price: {{input: 0, output: 0}}
            context_window: {DEFAULT_CONTEXT}
            max_output_tokens: 4096
        """
        for name in SMALL_WINDOW_MODELS
    )
    text = f"""
        providers:
          local:
            kind: openai
            base_url: {base_url}/v1
        models:{models}
    """
    path = directory / "catalog.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def module_of(name: str, functions: int) -> str:
    """A fenced Python module as a model writes one: ``functions`` functions with docstrings."""
    body = "".join(
        f"def {name}_step_{n}(values: list[int], offset: int = {n}) -> list[int]:\n"
        f'    """Return every value of ``values`` moved by ``offset`` ({name}, step {n})."""\n'
        f"    result = []\n"
        f"    for value in values:\n"
        f"        result.append(value + offset)\n"
        f"    return result\n\n\n"
        for n in range(functions)
    )
    return f"```python\n# file: {name}.py\n{body}```\n"


def request_of(fake, role_text: str, task_id: str):
    return [
        r for r in fake.requests if role_text in r.prompt_text and f"[{task_id}]" in r.prompt_text
    ]


async def test_a_code_task_with_large_dependencies_keeps_its_output_limit_on_an_8k_model(
    fake, tmp_path
):
    # Two dependencies of about 6,000 characters of code each (some 1,700 tokens each on the
    # embedded model's own tokenizer): more than the window takes beside a 4,096-token answer,
    # so they are trimmed, to what leaves that answer its room.
    answers = {"parse": module_of("parse", 22), "store": module_of("store", 22)}
    answers["app"] = module_of("app", 6)
    fake.responder = ScriptedLLM(plan=[], answers=answers)
    tasks = {
        "parse": Task(
            "parse", TaskType.CODE_GEN, "[parse] Write the parser.", [], ["python_syntax"]
        ),
        "store": Task(
            "store", TaskType.CODE_GEN, "[store] Write the store.", [], ["python_syntax"]
        ),
        "app": Task(
            "app", TaskType.CODE_GEN, "[app] Write the app.", ["parse", "store"], ["python_syntax"]
        ),
    }
    path = small_window_catalog(tmp_path, fake.base_url)

    async with UnifiedClient(catalog_path=path, env={}, retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=1.0), client=client, use_cache=False)
        state = await orch.run_project("[project] an app", "it works", tasks=tasks)

    (generation,) = [
        r
        for r in request_of(fake, "Write complete, working code", "app")
        if "Revise your answer" not in r.prompt_text
    ]
    assert generation.body["max_tokens"] == 4096  # not cut to the few hundred left beside it
    # Both dependencies are in the prompt, trimmed in the middle, never dropped.
    assert "parse_step_0" in generation.prompt_text and "store_step_0" in generation.prompt_text
    assert "characters omitted" in generation.prompt_text
    # Its critique and its evaluation fit the window too: they are asked, not refused for it.
    assert request_of(fake, "You review another model's answer", "app")
    assert request_of(fake, "You grade an answer", "app")
    app = state.results["app"]
    assert not any("context window" in note for note in app.notes), app.notes
    assert app.status is TaskStatus.COMPLETED, app.reason


async def test_the_critique_of_an_answer_that_fits_the_window_is_asked(fake, tmp_path):
    # 9,000 characters of code and its task: about 2,600 tokens on the embedded model's own
    # tokenizer, far inside 8,192 with the critique's 1,024. A byte a token said 9,000 and
    # more: no room, and the critique and the evaluation were never asked.
    answers = {"big": module_of("big", 38)}
    fake.responder = ScriptedLLM(plan=[], answers=answers)
    tasks = {"big": Task("big", TaskType.CODE_GEN, "[big] Write it.", [], ["python_syntax"])}
    path = small_window_catalog(tmp_path, fake.base_url)

    async with UnifiedClient(catalog_path=path, env={}, retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=1.0), client=client, use_cache=False)
        state = await orch.run_project("[project] big", "it works", tasks=tasks)

    assert len(answers["big"]) > 9000
    (critique,) = request_of(fake, "You review another model's answer", "big")
    assert critique.body["max_tokens"] == 1024  # its whole limit: the window has room for it
    assert request_of(fake, "You grade an answer", "big")
    assert state.results["big"].status is TaskStatus.COMPLETED


@pytest.fixture(scope="module")
def embedded():
    """The embedded model's server, whose own tokenizer counts what the estimate is held to."""
    if not embedded_available():
        pytest.skip("the local extra or the embedded model is not installed")
    local = LocalModel()
    asyncio.run(local.start())
    yield local
    asyncio.run(local.stop())


def counted_by(server: LocalModel, text: str) -> int:
    """``text``'s tokens as the model counts them (llama.cpp's /tokenize)."""
    request = urllib.request.Request(
        server.base_url.removesuffix("/v1") + "/tokenize",
        data=json.dumps({"content": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return len(json.load(response)["tokens"])


@pytest.mark.real_llm
@pytest.mark.parametrize("kind", SAMPLES)
def test_the_window_estimate_is_never_under_the_embedded_models_own_count(embedded, kind):
    # SmolLM2's vocabulary (49,152 entries) is the smallest in use here, so its counts are the
    # highest; the estimate stays above them, and on code and prose within about twice them.
    text = SAMPLES[kind]
    counted = counted_by(embedded, text)

    assert counted <= high_tokens(text) <= token_bound(text)
    if kind in ("code", "prose"):
        assert high_tokens(text) < 2 * counted
