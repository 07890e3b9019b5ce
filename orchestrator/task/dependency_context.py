"""What a task's prompt carries of the tasks it depends on: their outputs, each trimmed in the
middle to an equal share of the room the prompt has."""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.llm.catalog import Model
from orchestrator.llm.context_window import prompt_room
from orchestrator.run.prompts import CONTEXT_HEADING, GENERATE_SYSTEM, answer_schema, task_prompt
from orchestrator.run.tasks import Task, TaskResult
from orchestrator.text.tokens import high_tokens

# Dependency outputs get at least this many tokens of a prompt (about 2,000 characters of code)
# even where the window leaves them less: the output limit is then lowered to what is left, or
# the request refused for the window and the next model of the chain asked.
MIN_CONTEXT_TOKENS = 800


def dependency_context(
    task: Task,
    dependencies: Mapping[str, TaskResult],
    chain: list[Model],
    *,
    description: str,
    criteria: str,
    max_tokens: int,
) -> str:
    """Dependency outputs, each trimmed to an equal share of what the prompt has room for:
    its request leaves every model of the chain its whole output limit (``max_tokens``), as the
    client's window check counts tokens (``prompt_room``)."""
    if not dependencies:
        return ""
    prompt = task_prompt(task, description, criteria, "")
    system, schema = GENERATE_SYSTEM[task.type], answer_schema(task)
    room = min(
        prompt_room(m, prompt, system=system, max_tokens=max_tokens, schema=schema) for m in chain
    )
    headings = [f"\n\n### {task_id}\n" for task_id in dependencies]
    # Each text's own count, and a token more where two of them meet (a word they join).
    framing = sum(map(high_tokens, [CONTEXT_HEADING, *headings])) + len(headings) + 1
    share = max(MIN_CONTEXT_TOKENS, room - framing) // len(dependencies)
    parts = []
    for task_id, dep in dependencies.items():
        parts.append(f"### {task_id}\n{trim(dep.output, share)}")
    return "\n\n".join(parts)


def trim(text: str, limit: int) -> str:
    """``text`` whole when it is at most ``limit`` tokens (``high_tokens``), else its start and
    its end (two thirds and one third of what is kept) around a note of what was left out."""
    tokens = high_tokens(text)
    if tokens <= limit:
        return text
    keep = len(text) * limit // tokens  # the characters that many tokens take in this text
    while True:
        head = keep * 2 // 3
        omitted = len(text) - keep
        trimmed = f"{text[:head]}\n[... {omitted} characters omitted ...]\n{text[head + omitted :]}"
        if keep == 0 or high_tokens(trimmed) <= limit:
            return trimmed
        keep = keep * 15 // 16  # the note took some of the room: a little less of the text
