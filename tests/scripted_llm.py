"""A scripted stand-in for the LLMs behind the fake provider: it plays every role of a run.

It recognises the orchestrator's roles from their prompts (planner, author, critic, reviser,
grader) and the task from the ``[task-id]`` marker its tests put at the start of each task prompt.
Per task it can be told which scores to give and which versions to get wrong.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from fake_provider import RecordedRequest, Reply

_TASK_MARK = re.compile(r"Task \(([a-z_]+)\):\n\[([A-Za-z0-9_.-]+)\]")


@dataclass
class TaskScript:
    scores: list[float] = field(default_factory=lambda: [0.9])  # by judged version, last repeats
    broken_versions: set[int] = field(default_factory=set)  # versions with a syntax error
    kind: str = "code"  # "code" or "prose"


def default_plan() -> list[dict[str, Any]]:
    return [
        {"id": "core", "type": "code_generation", "prompt": "[core] Write add(a, b) with tests.",
         "dependencies": [], "hard_validators": ["python_syntax", "pytest"], "acceptance": None},
        {"id": "review", "type": "code_review", "prompt": "[review] Review the add module.",
         "dependencies": ["core"], "hard_validators": ["length"], "acceptance": None},
        {"id": "docs", "type": "creative_writing", "prompt": "[docs] Write a README section.",
         "dependencies": ["core"], "hard_validators": ["length"], "acceptance": None},
        {"id": "summary", "type": "summarization", "prompt": "[summary] Summarise the work.",
         "dependencies": ["review", "docs"], "hard_validators": [], "acceptance": None},
        {"id": "extract", "type": "data_extraction", "prompt": "[extract] List the functions.",
         "dependencies": ["core"], "hard_validators": ["json_schema"], "acceptance": None},
    ]  # fmt: skip


class ScriptedLLM:
    def __init__(
        self,
        plan: list[dict[str, Any]] | None = None,
        scripts: dict[str, TaskScript] | None = None,
        delay: float = 0.0,
        bill_max_output: bool = False,
        output_share: float | None = None,
        answers: dict[str, str] | None = None,
        integration_answers: dict[str, str] | None = None,
        broken_authors: int = 0,
    ) -> None:
        self.plan = plan if plan is not None else default_plan()
        # Task id -> the text every version of that task's answer is (instead of add()).
        self.answers = answers if answers is not None else {}
        # Task id -> its answer to an integration round's revision request (else its answer).
        self.integration_answers = integration_answers if integration_answers is not None else {}
        self.scripts = scripts or {}
        self.delay = delay
        # Bill every answer as if it used all of max_tokens, as a verbose model would.
        self.bill_max_output = bill_max_output
        # Bill every answer as this share of max_tokens (answers of a chosen length); None: as
        # long as its text.
        self.output_share = output_share
        # The first this many models to write code write code that never compiles (``broken``).
        self.broken_authors = broken_authors
        self.broken: list[str] = []
        self._lock = threading.Lock()
        self._judged: dict[str, list[int]] = {}  # task -> versions in the order first judged
        self.roles: list[tuple[str, str | None, str]] = []  # (role, task, model) per request

    def __call__(self, request: RecordedRequest) -> Reply:
        text = request.prompt_text
        task_type, task_id = _task_of(text)
        role = _role(text)
        with self._lock:
            self.roles.append((role, task_id, request.model))
        script = self.scripts.get(task_id or "", TaskScript())
        if role == "plan":
            body = json.dumps({"tasks": self.plan})
        elif role == "grade":
            body = json.dumps({"score": self._score(task_id, script, text), "reasoning": "ok"})
        elif role == "critique":
            body = "Add a docstring and handle negative numbers."
        elif role == "integrate":
            body = self.integration_answers.get(task_id or "") or self.answers.get(task_id or "")
            body = body or _answer(task_id, script, 0, task_type)
        else:
            # Every revision is a new version, even one made from an older best answer.
            version = self.count("revise", task_id) if role == "revise" else 0
            if task_type == "code_generation" and self._breaks(request.model):
                script = TaskScript(broken_versions={version}, kind=script.kind)
            body = self.answers.get(task_id or "") or _answer(task_id, script, version, task_type)
        share = 1.0 if self.bill_max_output else self.output_share
        output_tokens = max(1, int(_max_tokens(request) * share)) if share else None
        return Reply(text=body, delay=self.delay, output_tokens=output_tokens)

    def _breaks(self, model: str) -> bool:
        with self._lock:
            if model not in self.broken and len(self.broken) < self.broken_authors:
                self.broken.append(model)
            return model in self.broken

    def _score(self, task_id: str | None, script: TaskScript, text: str) -> float:
        graded = text.split("--- Answer to grade ---", 1)[-1]
        versions = _versions(graded, task_id)
        version = versions[0] if versions else 0
        with self._lock:
            seen = self._judged.setdefault(task_id or "", [])
            if version not in seen:
                seen.append(version)
            index = seen.index(version)
        return script.scores[min(index, len(script.scores) - 1)]

    def judged_versions(self, task_id: str) -> list[int]:
        return list(self._judged.get(task_id, []))

    def count(self, role: str, task_id: str | None = None) -> int:
        return sum(1 for r, t, _ in self.roles if r == role and (task_id is None or t == task_id))


def _max_tokens(request: RecordedRequest) -> int:
    body = request.body
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(limit or body.get("generationConfig", {}).get("maxOutputTokens") or 1)


def _task_of(text: str) -> tuple[str, str | None]:
    found = _TASK_MARK.search(text)
    return (found.group(1), found.group(2)) if found else ("creative_writing", None)


def _versions(text: str, task_id: str | None) -> list[int]:
    # Answers carry "v<N>@<task>" so dependency outputs quoted in a prompt are told apart.
    return [int(v) for v in re.findall(rf"v(\d+)@{re.escape(task_id or '')}\b", text)]


def _role(text: str) -> str:
    if "software project planner" in text:
        return "plan"
    if "You grade an answer" in text:
        return "grade"
    if "You review another model's answer" in text:
        return "critique"
    if "the project's checks failed as reported below" in text:
        return "integrate"
    if "Revise your answer to fix the problems" in text:
        return "revise"
    return "generate"


def _answer(task_id: str | None, script: TaskScript, version: int, task_type: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", task_id or "task")
    if task_type == "data_extraction":
        return json.dumps({"functions": ["add"], "version": f"v{version}@{task_id}"})
    if task_type != "code_generation" or script.kind == "prose":
        return f"Prose for {task_id}, v{version}@{task_id}. " + "It explains the add function. " * 3
    signature = (
        "def add(a, b) return a + b"
        if version in script.broken_versions
        else ("def add(a, b):\n    return a + b")
    )
    return (
        f"```python\n# file: mod_{name}.py\n# v{version}@{task_id}\n{signature}\n```\n\n"
        f"```python\n# file: test_mod_{name}.py\nfrom mod_{name} import add\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n```\n"
    )


def from_env() -> ScriptedLLM:
    """For a fake server in another process: the script comes from $SCRIPTED_LLM (JSON)."""
    config = json.loads(os.environ.get("SCRIPTED_LLM", "{}"))
    scripts = {
        task_id: TaskScript(
            scores=spec.get("scores", [0.9]),
            broken_versions=set(spec.get("broken_versions", [])),
            kind=spec.get("kind", "code"),
        )
        for task_id, spec in config.get("scripts", {}).items()
    }
    return ScriptedLLM(
        plan=config.get("plan"),
        scripts=scripts,
        delay=config.get("delay", 0.0),
        bill_max_output=config.get("bill_max_output", False),
    )
