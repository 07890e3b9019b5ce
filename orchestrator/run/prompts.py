"""What the orchestrator says to models in each role. Model output is quoted, never obeyed."""

from __future__ import annotations

from typing import Any

from orchestrator.run.tasks import Task, TaskType

DECOMPOSE_SYSTEM = (
    "You are a software project planner. Split the project into {min_tasks}-{max_tasks} atomic "
    "tasks that together meet the acceptance criteria. Each task has a unique short id, one of "
    "the types {types}, a self-contained prompt, the ids it depends on (no cycles), and the hard "
    "validators its output must pass, chosen from {validators}. Use python_syntax and pytest "
    "for code that includes tests, json_schema for JSON data, length for prose."
)

DECOMPOSE_USER = "Project:\n{description}\n\nAcceptance criteria:\n{criteria}"

GENERATE_SYSTEM = {
    TaskType.CODE_GEN: (
        "You are an expert software engineer. Write complete, working code in fenced code blocks, "
        "one block per file, each starting with a '# file: relative/path.py' line that names "
        "its file in the project. When the task asks for tests, write them as pytest functions "
        "in test_*.py files that import the project's modules by those names."
    ),
    TaskType.CODE_REVIEW: "You are a meticulous code reviewer. Be specific and actionable.",
    TaskType.REASONING: "You are a careful analyst. Reason step by step and state conclusions.",
    TaskType.WRITING: (
        "You are a skilled technical writer. When the task asks for a file of the project (a "
        "README, a usage guide), make the first line of your answer '<!-- file: README.md -->' "
        "with the file's relative path."
    ),
    TaskType.DATA_EXTRACT: "You extract data precisely. Answer with the requested data only.",
    TaskType.SUMMARIZE: "You write faithful, concise summaries.",
    TaskType.EVALUATE: "You are a rigorous evaluator of work against criteria.",
}

CRITIQUE_SYSTEM = (
    "You review another model's answer to a task. List its concrete defects and what to change, "
    "most important first. Do not rewrite the answer. Be brief."
)

REVISE_INSTRUCTIONS = (
    "Revise your answer to fix the problems below. Reply with the complete revised answer only."
)

INTEGRATION_INSTRUCTIONS = (
    "Your files were assembled with the other tasks' files into one project, and the project's "
    "checks failed as reported below. Revise your files so that the whole project passes. Reply "
    "with your complete revised answer: every file of yours, each in its own fenced block whose "
    "first line is '# file: path'. Nothing can be installed: use only the standard library and "
    "what the project already has."
)

EVALUATE_SYSTEM = (
    "You grade an answer to a task against the task and the project's acceptance criteria. "
    "Score from 0.0 (useless) to 1.0 (fully meets every requirement). Be strict and consistent."
)

EVALUATION_SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "reasoning": {"type": "string"},
    },
    "required": ["score", "reasoning"],
    "additionalProperties": False,
}


CONTEXT_HEADING = "Results of the tasks this one depends on:\n"


def task_prompt(task: Task, description: str, criteria: str, context: str) -> str:
    parts = [f"Project (what this task is part of):\n{description}"]
    parts.append(f"Task ({task.type.value}):\n{task.prompt}")
    if task.acceptance:
        parts.append(f"Acceptance notes for this task:\n{task.acceptance}")
    parts.append(f"Project acceptance criteria:\n{criteria}")
    if context:
        parts.append(CONTEXT_HEADING + context)
    return "\n\n".join(parts)


def critique_prompt(task_text: str, answer: str) -> str:
    return f"{task_text}\n\n--- Answer to review ---\n{answer}\n--- End of answer ---"


def revise_prompt(feedback: list[str]) -> str:
    return REVISE_INSTRUCTIONS + "\n\n" + "\n\n".join(feedback)


def integration_prompt(request: str) -> str:
    return INTEGRATION_INSTRUCTIONS + "\n\n" + request


# An evaluation's readings: the same task, answer and rubric, in another order. Two verdicts
# asked of one model (the only usable evaluator, or a fallback one verdict's chain shares with
# the other's) are then never one request sent twice, which identical requests in flight would
# share as one paid answer counted as two. The order is what changes because it is what an LLM
# grader is most sensitive to (it weighs what it read last more), so a second reading checks the
# first instead of repeating it; a temperature or seed would not do, as Anthropic's SDK takes
# neither and its requests would stay identical.


def evaluate_prompt(task_text: str, answer: str, reading: int = 1) -> str:
    """The grading request for an evaluation's verdict number ``reading`` (1 to 3)."""
    graded = f"--- Answer to grade ---\n{answer}\n--- End of answer ---"
    ask = "Give the score and a short reasoning."
    if reading == 1:
        return f"{task_text}\n\n{graded}\n\n{ask}"
    if reading == 2:  # the answer first, then what it is judged against
        return f"{graded}\n\nThe task it answers:\n{task_text}\n\n{ask}"
    # The third, a tie-breaker: the requirements one at a time before the verdict.
    return (
        f"{task_text}\n\n{graded}\n\nGo through the task's requirements and the acceptance "
        "criteria one at a time, then give the score and a short reasoning."
    )


def answer_schema(task: Task) -> dict[str, Any] | None:
    """The schema a task's answer must match, sent with its generation and revisions so a
    server's structured output (a local server's constrained decoding) holds it to it."""
    if task.output_schema and "json_schema" in task.hard_validators:
        return task.output_schema
    return None
