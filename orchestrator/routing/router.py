"""Which model does what: every model choice of a run, with its reasons."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from orchestrator.errors import UnknownModelError
from orchestrator.llm.catalog import Catalog, Model
from orchestrator.routing.backends import (
    Candidate,
    OptimizationBackend,
    Ranked,
    RoutingTableBackend,
)
from orchestrator.routing.profiles import ModelProfile, demoted
from orchestrator.routing.screen import ConstraintPlanner, Screened
from orchestrator.run.config import DEFAULT_MAX_FALLBACKS
from orchestrator.run.tasks import TaskType

# The design document's priority lists, by the names it uses; the catalog maps each name to a
# current model id, and a user catalog file can re-point any of them.
ROUTING_TABLE: dict[TaskType, tuple[tuple[str, ...], int]] = {
    TaskType.CODE_GEN: (("Kimi K2.5", "Claude Sonnet", "GPT-4o", "Gemini 2.5 Pro"), 4096),
    TaskType.CODE_REVIEW: (("Kimi K2.5", "GPT-4o", "Claude Opus", "Gemini 2.5 Pro"), 2048),
    TaskType.REASONING: (("Kimi K2.5", "Claude Opus", "GPT-4o", "Gemini 2.5 Pro"), 2048),
    TaskType.WRITING: (("Claude Opus", "GPT-4o", "Gemini 2.5 Pro"), 2048),
    TaskType.DATA_EXTRACT: (("Gemini 2.5 Flash", "GPT-4o-mini", "Claude Haiku"), 1024),
    TaskType.SUMMARIZE: (("Gemini 2.5 Flash", "Claude Haiku", "GPT-4o-mini"), 512),
    TaskType.EVALUATE: (("Kimi K2.5", "Claude Opus", "GPT-4o", "Gemini 2.5 Pro"), 600),
}

DECOMPOSITION_MAX_TOKENS = 4096
CRITIQUE_MAX_TOKENS = 1024
T = TypeVar("T")


# A job's cost is estimated for a prompt this long and an answer as long as the job allows.
TYPICAL_PROMPT_TOKENS = 2000


class CallCostModel(Protocol):
    """What calls cost as measured (``orchestrator.money.forecast.CostPredictor``)."""

    def predict(self, model: Model, task_type: TaskType) -> float: ...

    def samples(self, model: Model, task_type: TaskType) -> int: ...

    def record(self, model: Model, task_type: TaskType, actual_cost_usd: float) -> None: ...


def at_least_measured(estimate: float, profile: ModelProfile | None) -> float:
    """A catalog ``estimate`` of a call, raised to what the model's calls cost on average as
    telemetry measured them (this run's and earlier runs'), when that is more: prompts longer
    than assumed, billed reasoning. Never lowered: the catalog estimate is an upper one for
    every model alike, and a measured average of short answers would make one model look
    cheaper than the others by the comparison alone."""
    measured = profile.cost_avg_usd if profile is not None else None
    return estimate if measured is None else max(estimate, measured)


# The task type a role's calls are measured under, when it is not the task's own.
ROLE_TASK_TYPES = {"critic": TaskType.CODE_REVIEW, "evaluator": TaskType.EVALUATE}


@dataclass(frozen=True)
class Decision:
    """One model selection: for what, by which backend, the chain it produced (each model with
    the reason for its place), the models kept at the back and those a policy excluded, with
    why, and what the chosen models still violate under SOFT or MONITOR policies."""

    role: str  # planner, generation, critic or evaluator
    task_type: TaskType | None
    task_id: str | None
    backend: str
    ranked: tuple[Ranked, ...]
    held_back: tuple[tuple[Model, str], ...] = ()
    excluded: tuple[tuple[Model, str], ...] = ()
    violations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # model key -> text
    beyond: tuple[Model, ...] = ()  # candidates past the chain's fallbacks: never asked

    @property
    def chain(self) -> list[Model]:
        return [r.model for r in self.ranked] + [m for m, _ in self.held_back]

    @property
    def chosen(self) -> Model | None:
        chain = self.chain
        return chain[0] if chain else None

    def to_record(self) -> dict[str, Any]:
        """The decision as data, for the audit log: every candidate with the reason for its
        place, the policy verdicts with theirs, and the choice."""
        return {
            "role": self.role,
            "task_type": self.task_type.value if self.task_type else None,
            "backend": self.backend,
            "chosen": self.chosen.key if self.chosen else None,
            "candidates": [
                {
                    "model": r.model.key,
                    "score": r.score,
                    "reason": r.reason,
                    **({"figures": dict(r.figures)} if r.figures else {}),
                }
                for r in self.ranked
            ],
            "held_back": [{"model": m.key, "reason": why} for m, why in self.held_back],
            "excluded": [{"model": m.key, "reason": why} for m, why in self.excluded],
            "beyond_fallbacks": [m.key for m in self.beyond],
            "violations": {key: list(found) for key, found in self.violations.items()},
            "explanation": self.explain(),
        }

    def explain(self) -> str:
        """The decision in one line, for logs and audits."""
        what = f"{self.role} for {self.task_id or self.task_type or 'the plan'}"
        if self.chosen is None:
            return f"{what}: no usable model"
        first = self.ranked[0] if self.ranked else None
        why = first.reason if first is not None else dict(self.held_back)[self.chosen]
        order = ", ".join(m.value for m in self.chain)
        line = f"{what}: {self.chosen.value} ({self.backend}: {why}); then {order}"
        if self.excluded:
            line += f"; {len(self.excluded)} excluded by policy"
        recorded = self.violations.get(self.chosen.key)
        if recorded:
            line += f"; policy violations allowed: {'; '.join(recorded)}"
        return line


@dataclass(frozen=True)
class Router:
    """The one place models are chosen: a chain for each role (planner, author, critic,
    evaluator; each chain's tail is the fallback), over the models usable now.

    Candidates are every usable model, with the routing table's position for the job and the
    job's estimated cost; ``backend`` puts them in order; models whose circuit breaker is open go
    to the back. Each choice is handed to ``on_decision`` with its reasons.
    """

    catalog: Catalog
    usable: tuple[Model, ...]
    healthy: Callable[[Model], bool] = lambda model: True
    backend: OptimizationBackend = field(default_factory=RoutingTableBackend)
    profiles: Mapping[str, ModelProfile] = field(default_factory=dict)
    on_decision: Callable[[Decision], None] | None = None
    planner: ConstraintPlanner = field(default_factory=ConstraintPlanner)
    # A call's estimated cost: the measured average of the (model, task type) once there is
    # one, else the catalog price of a typical call, ``at_least_measured``.
    cost_model: CallCostModel | None = None
    # Each chain is the choice and at most this many fallbacks.
    max_fallbacks: int = DEFAULT_MAX_FALLBACKS
    # What follows from the catalog and the usable models alone (the table's models for a job,
    # a typical call's catalog price), worked out once: every paid call asks for a chain.
    _fixed: dict[tuple[Any, ...], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def max_tokens(self, task_type: TaskType) -> int:
        return ROUTING_TABLE[task_type][1]

    def generation_chain(self, task_type: TaskType, task_id: str | None = None) -> list[Model]:
        """Authors (and revisers) for a task of ``task_type``."""
        preferred = self._preferred(task_type)
        return self._select("generation", task_type, task_id, preferred, self.max_tokens(task_type))

    def reviewer_chain(
        self, task_type: TaskType, author: Model, task_id: str | None = None
    ) -> list[Model]:
        """Critics: another provider first, then another model, then the author as a last resort."""
        role = TaskType.CODE_REVIEW if task_type is TaskType.CODE_GEN else task_type
        preferred = self._preferred(role)
        return self._select(
            "critic", task_type, task_id, preferred, CRITIQUE_MAX_TOKENS, away_from=author
        )

    def evaluator_chain(
        self, author: Model, task_id: str | None = None, task_type: TaskType | None = None
    ) -> list[Model]:
        preferred = self._preferred(TaskType.EVALUATE)
        limit = self.max_tokens(TaskType.EVALUATE)
        return self._select("evaluator", task_type, task_id, preferred, limit, away_from=author)

    @property
    def learns(self) -> bool:
        """Whether the backend ranks by how answers were judged (``AdaptiveBackend``)."""
        return bool(getattr(self.backend, "learns", False))

    def reviser_chain(
        self, task_type: TaskType, author: Model, task_id: str | None = None, *, failed: bool
    ) -> list[Model]:
        """Revisers of ``author``'s answer: its author first, unless the answer ``failed`` its
        checks: then the work moves to another model (the author last)."""
        chain = self.generation_chain(task_type, task_id)
        if failed:
            others = [m for m in chain if m != author]
            return [*others, author][: self.max_fallbacks + 1]
        return self.led_by(author, chain)

    def led_by(self, first: Model, chain: list[Model]) -> list[Model]:
        """``chain`` asking ``first`` first (a reviser its own answer's author), still within
        the fallbacks allowed."""
        return ([first] + [m for m in chain if m != first])[: self.max_fallbacks + 1]

    def decomposition_chain(self) -> list[Model]:
        """The planner: no table entry, so the backend's order (the cheapest first by default)."""
        return self._select("planner", None, None, [], DECOMPOSITION_MAX_TOKENS)

    def first_calls(self, task_types: Iterable[TaskType], *, planner: bool = False) -> list[Model]:
        """The models a task of each of ``task_types`` asks first (author, critic, evaluator),
        and with ``planner`` the planner's: a forecast, reported to nobody."""
        quiet = replace(self, on_decision=None)
        calls: list[Model] = quiet.decomposition_chain()[:1] if planner else []
        for task_type in task_types:
            chain = quiet.generation_chain(task_type)
            if chain:
                author = chain[0]
                calls += [author, *quiet.reviewer_chain(task_type, author)[:1]]
                calls += quiet.evaluator_chain(author)[:1]
        return calls

    def _select(
        self,
        role: str,
        task_type: TaskType | None,
        task_id: str | None,
        preferred: list[Model],
        output_tokens: int,
        away_from: Model | None = None,
    ) -> list[Model]:
        # The task type of an author's job; None for the planner, critics and evaluators.
        writes = task_type if role == "generation" else None
        candidates = self._candidates(role, task_type, writes, preferred, output_tokens)
        screened = self.planner.screen(candidates)
        ranked = self.backend.rank(screened.allowed)
        if away_from is not None:
            ranked = _away_from(away_from, ranked, lambda r: r.model)
        # A learning backend says what a model's record made of its pass rate before its
        # failing streak: only a streak that rate makes unlikely holds the model back.
        record = getattr(self.backend, "rate_before_streak", None)
        held = demoted(self.profiles, writes.value, record) if writes is not None else {}
        ready: list[Ranked] = []
        held_back: list[tuple[Model, str]] = []
        for r in ranked:
            if self._ready(r.model, screened) and r.model.key not in held:
                ready.append(r)
            else:
                because = self._held_because(r.model, screened, held.get(r.model.key))
                held_back.append((r.model, f"held back: {because} ({r.reason})"))
        # The ready ones, then the held back, as far as the fallbacks allowed go.
        keep = self.max_fallbacks + 1
        beyond = ([r.model for r in ready] + [m for m, _ in held_back])[keep:]
        ready = ready[:keep]
        held_back = held_back[: keep - len(ready)]
        decision = Decision(
            role=role,
            task_type=task_type,
            task_id=task_id,
            backend=self.backend.name,
            ranked=tuple(ready),
            held_back=tuple(held_back),
            excluded=tuple(screened.excluded),
            violations={
                key: tuple(str(v) for v in found) for key, found in screened.violations.items()
            },
            beyond=tuple(beyond),
        )
        if self.on_decision is not None:
            self.on_decision(decision)
        return decision.chain

    def _candidates(
        self,
        role: str,
        task_type: TaskType | None,
        writes: TaskType | None,
        preferred: list[Model],
        output_tokens: int,
    ) -> list[Candidate]:
        """Every usable model for the job, with its estimated cost and table position; for an
        author's job under a backend that weighs whole attempts (one that learns what passes),
        what an attempt pays besides the call too."""
        measured_as = ROLE_TASK_TYPES.get(role, task_type)
        overhead = self._attempt_overheads(writes) if writes is not None and self.learns else None
        table_ranks = {model.key: rank for rank, model in enumerate(preferred)}
        return [
            Candidate(
                profile=(profile := self._profile(model)),
                cost_usd=self._call_cost(profile, measured_as, output_tokens),
                table_rank=table_ranks.get(model.key),
                task_type=writes,
                overhead_usd=overhead(model) if overhead is not None else 0.0,
            )
            for model in self.usable
        ]

    def _attempt_overheads(self, task_type: TaskType) -> Callable[[Model], float]:
        """What an author's attempt at ``task_type`` pays besides its own call, by author: the
        critique of its answer and the two verdicts on it, from the first critic and evaluators
        this router would ask for that author (another provider's first), each call estimated
        as every call is."""
        whole = replace(self, on_decision=None, max_fallbacks=len(self.usable))
        role = TaskType.CODE_REVIEW if task_type is TaskType.CODE_GEN else task_type
        critics = whole._select(
            "critic", task_type, None, self._preferred(role), CRITIQUE_MAX_TOKENS
        )
        graders = whole._select(
            "evaluator", task_type, None, self._preferred(TaskType.EVALUATE),
            self.max_tokens(TaskType.EVALUATE),
        )  # fmt: skip
        critique = {
            m: self._call_cost(self._profile(m), ROLE_TASK_TYPES["critic"], CRITIQUE_MAX_TOKENS)
            for m in critics
        }
        verdict = {
            m: self._call_cost(
                self._profile(m), TaskType.EVALUATE, self.max_tokens(TaskType.EVALUATE)
            )
            for m in graders
        }

        def overhead(author: Model) -> float:
            critic = [m for m in _away_from(author, critics, _itself) if m != author][:1]
            judges = [m for m in _away_from(author, graders, _itself) if m != author][:2]
            return sum(critique[m] for m in critic) + sum(verdict[m] for m in judges)

        return overhead

    def _call_cost(
        self, profile: ModelProfile, task_type: TaskType | None, output_tokens: int
    ) -> float:
        model = profile.model
        costs = self.cost_model
        if costs is not None and task_type is not None and costs.samples(model, task_type):
            return costs.predict(model, task_type)
        typical = self._fixed.get(("typical call", model.key, output_tokens))
        if typical is None:
            typical = profile.cost_per_call(TYPICAL_PROMPT_TOKENS, output_tokens)
            self._fixed["typical call", model.key, output_tokens] = typical
        return at_least_measured(typical, profile)

    def _ready(self, model: Model, screened: Screened) -> bool:
        return self.healthy(model) and model.key not in screened.unaffordable

    def _held_because(self, model: Model, screened: Screened, failing: int | None) -> str:
        if not self.healthy(model):
            return "failing recently"
        if model.key in screened.unaffordable:
            return "a call may cost more than the budget left"
        return f"its last {failing} answers of this task type failed their checks"

    def _profile(self, model: Model) -> ModelProfile:
        profile = self.profiles.get(model.key)
        if profile is None:
            provider = self.catalog.provider_of(model)
            profile = ModelProfile(model, provider.region, provider.trains_on_output, model.quality)
        return profile

    def _preferred(self, task_type: TaskType) -> list[Model]:
        """The routing table's models for ``task_type`` that are usable, in its order."""
        known: list[Model] | None = self._fixed.get(("table", task_type))
        if known is None:
            known = self._fixed["table", task_type] = self._table_models(task_type)
        return known

    def _table_models(self, task_type: TaskType) -> list[Model]:
        names, _ = ROUTING_TABLE[task_type]
        preferred: list[Model] = []
        for name in names:
            try:
                model = self.catalog.resolve(name)
            except UnknownModelError:
                continue  # a user catalog may have dropped or renamed a design name
            if model in self.usable and model not in preferred:
                preferred.append(model)
        return preferred


def _away_from(author: Model, items: Iterable[T], model_of: Callable[[T], Model]) -> list[T]:
    """``items`` with another provider's models first, then the author's provider's others,
    the author last; otherwise in their order."""

    def place(item: T) -> tuple[bool, bool]:
        model = model_of(item)
        return model.provider == author.provider, model == author

    return sorted(items, key=place)


def _itself(model: Model) -> Model:
    return model
