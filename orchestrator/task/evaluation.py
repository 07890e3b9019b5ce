"""Scoring a task's answer: which evaluators give their verdicts, how many the task needs to
complete on the score, and the score the verdicts give together."""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field

from orchestrator.llm.catalog import Model
from orchestrator.llm.client import Completion
from orchestrator.llm.providers.base import Message
from orchestrator.money.budget import BudgetExceeded
from orchestrator.observe.telemetry import TelemetryCollector
from orchestrator.routing.router import ROUTING_TABLE, Router
from orchestrator.run.prompts import EVALUATE_SYSTEM, EVALUATION_SCHEMA, evaluate_prompt
from orchestrator.run.tasks import Task, TaskResult, TaskType
from orchestrator.task.calls import ChainExhausted, ProvidersUnavailable, TaskCalls

CONSISTENCY_DELTA = 0.05
# With one usable evaluator, a first score this close to the threshold (either side) is read a
# second time before it decides the task; a score further away is decided by one verdict.
CLOSE_TO_THRESHOLD = 0.1
EVALUATION_MAX_TOKENS = ROUTING_TABLE[TaskType.EVALUATE][1]
ONE_VERDICT = (
    "only one of the two evaluations gave a usable verdict, which is not enough to complete the "
    "task (allow it with --allow-single-verdict)"
)
# Who looks at an answer: with fewer usable models than these, one model plays two of them.
REVIEW_ROLES = ("author", "critic", "evaluator")


@dataclass(frozen=True)
class Evaluation:
    """An evaluation's outcome: the score and the reasoning closest to it, how many usable
    verdicts it rests on, and how many the task needs to complete on it."""

    score: float
    reasoning: str
    verdicts: int
    needed: int  # two; one from a lone evaluator whose score was far from the threshold

    def confirmed(self, allow_single_verdict: bool) -> bool:
        """Whether the score rests on the verdicts it needs (or one, when the user allows it)."""
        return self.verdicts >= self.needed or (allow_single_verdict and self.verdicts >= 1)


@dataclass
class _Verdicts:
    """One evaluation of ``answer``: its verdicts as they come in, who gave them, and what kept
    the others from coming."""

    task_text: str
    answer: str
    author: Model
    critic: Model | None  # the model whose critique the answer last got
    iteration: int
    completions: list[Completion] = field(default_factory=list)
    graders: list[Model] = field(default_factory=list)
    refused: bool = False  # a verdict did not fit the budget
    outage: ProvidersUnavailable | None = None  # a verdict's providers were all down

    def scores(self) -> list[float]:
        return [float(v.parsed["score"]) for v in self.completions]


class Evaluator:
    """Scores one task's answers, asking through the task's ``calls``; notes on its ``result``
    the verdicts that are not independent of the answer's author or critic."""

    def __init__(
        self,
        task: Task,
        result: TaskResult,
        calls: TaskCalls,
        router: Router,
        telemetry: TelemetryCollector,
        threshold: float,
    ) -> None:
        self.task = task
        self.result = result
        self.calls = calls
        self.router = router
        self.telemetry = telemetry
        self.threshold = threshold

    async def evaluate(
        self, task_text: str, answer: str, author: Model, iteration: int, critic: Model | None
    ) -> Evaluation:
        """The answer's score, the reasoning closest to it, and the verdicts it rests on.

        With two evaluators other than the author, two verdicts from two models (another
        provider's when there is one), asked at once. With one, a single verdict unless its score
        is within CLOSE_TO_THRESHOLD of the threshold, where a second reading of that model checks
        it. Two verdicts that disagree by more than CONSISTENCY_DELTA get a third. Each verdict's
        request reads differently (``evaluate_prompt``), so none is sent twice.
        """
        chain = self.router.evaluator_chain(author, self.task.id, self.task.type)
        independent = [m for m in chain if m != author]
        found = _Verdicts(task_text, answer, author, critic, iteration)
        needed = 2
        if len(independent) >= 2:
            await self._at_once(found, chain, _another_grader(independent[0], independent[1:]))
        else:
            needed = await self._one_by_one(found, chain)
        if not found.completions and found.refused:
            raise BudgetExceeded("no evaluation fits in the budget left")
        if not found.completions and found.outage is not None:
            raise found.outage  # a score that could not be obtained is not a score of 0
        scores = found.scores()
        if len(scores) == 2 and abs(scores[0] - scores[1]) > CONSISTENCY_DELTA:
            unused = [m for m in independent if m not in found.graders]
            await self._verdict(found, 3, self.router.led_by(unused[0], chain) if unused else chain)
        return self._outcome(found, needed)

    async def _at_once(self, found: _Verdicts, chain: list[Model], second: Model) -> None:
        """Two independent verdicts, the second led by ``second``, asked at once: that halves
        the evaluation latency, and the task group never leaves one running behind the other."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._verdict(found, 1, chain))
                group.create_task(self._verdict(found, 2, self.router.led_by(second, chain)))
        except ExceptionGroup as failed:
            # What stopped the verdicts (a lost lease, a full disk), said as itself.
            raise failed.exceptions[0] from None

    async def _one_by_one(self, found: _Verdicts, chain: list[Model]) -> int:
        """A lone evaluator's verdict, read a second time when it is close to the threshold;
        returns how many verdicts the task needs."""
        await self._verdict(found, 1, chain)
        if found.completions and abs(found.scores()[0] - self.threshold) > CLOSE_TO_THRESHOLD:
            return 1  # far from the threshold: a second reading of it is not worth paying
        if found.completions:
            await self._verdict(found, 2, self.router.led_by(found.graders[0], chain))
        return 2

    async def _verdict(self, found: _Verdicts, repeat: int, models: list[Model]) -> None:
        """Verdict number ``repeat``, asked of ``models``, added to ``found``; what kept it from
        coming is kept there too, not raised: the other verdicts may still count."""
        try:
            verdict, evaluator = await self.calls.ask(
                models,
                [Message("user", evaluate_prompt(found.task_text, found.answer, reading=repeat))],
                system=EVALUATE_SYSTEM,
                max_tokens=EVALUATION_MAX_TOKENS,
                phase="evaluation",
                slot=f"{self.task.id}/{found.iteration}/evaluate/{repeat}",
                step="evaluation",
                iteration=found.iteration,
                repeat=repeat,
                schema=EVALUATION_SCHEMA,
            )
        except ChainExhausted:
            return
        except ProvidersUnavailable as exc:
            found.outage = exc  # one verdict from a provider still up still counts
            return
        except BudgetExceeded:
            found.refused = True  # one verdict that fits the budget still counts
            return
        found.completions.append(verdict)
        found.graders.append(evaluator)
        self._note_grader(evaluator, found.author, found.critic)

    def _outcome(self, found: _Verdicts, needed: int) -> Evaluation:
        if not found.completions:
            return Evaluation(0.0, "", 0, needed)
        self.result.self_graded = all(grader == found.author for grader in found.graders)
        # Two verdicts that disagree take the lower; a third breaks the tie by the median.
        scores = found.scores()
        score = statistics.median(scores) if len(scores) == 3 else min(scores)
        # What quality-aware routing learns the model is worth.
        self.telemetry.record_quality(found.author, score)
        closest = min(found.completions, key=lambda v: abs(float(v.parsed["score"]) - score))
        return Evaluation(score, str(closest.parsed.get("reasoning", "")), len(scores), needed)

    def _note_grader(self, evaluator: Model, author: Model, critic: Model | None) -> None:
        """Say when a verdict is not independent of the answer's author or its critic."""
        if self.result.reviewer_model is None:
            self.result.reviewer_model = evaluator
        if evaluator == author:
            self.calls.note("evaluated by its own author: no other model was available")
        elif evaluator == critic and len(self.router.usable) < len(REVIEW_ROLES):
            self.calls.note(
                f"critiqued and evaluated by the same model ({evaluator.value}): no third "
                "model was available, so its grade is not independent of its critique"
            )


def _another_grader(first: Model, others: list[Model]) -> Model:
    """The second evaluator beside ``first``: another provider's model when there is one."""
    return next((m for m in others if m.provider != first.provider), others[0])
