"""The cost layer: what calls are expected to cost, and what a project is expected to cost.

``CostPredictor`` keeps a moving average of what each (model, task type) call really cost, with
the catalog price of a typical call as the fallback (raised to what telemetry measured the
model's calls to cost when that is more); routing and forecasts use it, the engine feeds it
every answered paid call, and it is saved with the project. ``CostForecaster`` adds up
a task list's expected calls (the loop's first iteration: generate, critique, revise, two
evaluations) with the models routing would pick, before anything is paid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from .budget import Budget
from .catalog import Catalog, Model
from .errors import ConfigError
from .models import ModelProfile, Task, TaskType
from .progress import format_usd
from .routing import (
    DECOMPOSITION_MAX_TOKENS,
    ROLE_TASK_TYPES,
    ROUTING_TABLE,
    TYPICAL_PROMPT_TOKENS,
    Router,
    at_least_measured,
)

CRITIQUE_TYPE = ROLE_TASK_TYPES["critic"]  # the task type critique calls are learnt under
EVALUATION_TYPE = ROLE_TASK_TYPES["evaluator"]


def typical_call_usd(model: Model, task_type: TaskType | None) -> float:
    """The catalog price of a call of ``task_type`` (None: a plan): a typical prompt and an
    answer as long as the job allows, so an upper estimate rather than a lower one."""
    output = DECOMPOSITION_MAX_TOKENS if task_type is None else ROUTING_TABLE[task_type][1]
    return model.price.cost(TYPICAL_PROMPT_TOKENS, output)


class CostPredictor:
    """A moving average (weight ``alpha`` for the newest) of the cost of each (model, task
    type) call; the catalog's price of a typical call until one was recorded."""

    def __init__(self, alpha: float = 0.1) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self._averages: dict[tuple[str, TaskType], tuple[float, int]] = {}

    def record(self, model: Model, task_type: TaskType, actual_cost_usd: float) -> None:
        """What one answered call really cost (cache hits and journal replays cost nothing
        now and are not recorded)."""
        key = (model.key, TaskType(task_type))
        previous = self._averages.get(key)
        if previous is None:
            self._averages[key] = (actual_cost_usd, 1)
        else:
            average, samples = previous
            blended = (1 - self.alpha) * average + self.alpha * actual_cost_usd
            self._averages[key] = (blended, samples + 1)

    def predict(
        self, model: Model, task_type: TaskType, profile: ModelProfile | None = None
    ) -> float:
        """The average for (``model``, ``task_type``); without one, the catalog's price of a
        typical call, or what ``profile`` measured the model's calls to cost when that is more
        (``orchestrator.routing.at_least_measured``)."""
        known = self._averages.get((model.key, TaskType(task_type)))
        if known is not None:
            return known[0]
        return at_least_measured(typical_call_usd(model, TaskType(task_type)), profile)

    def samples(self, model: Model, task_type: TaskType) -> int:
        known = self._averages.get((model.key, TaskType(task_type)))
        return known[1] if known is not None else 0

    def cheapest_model(self, task_type: TaskType, candidates: Sequence[Model]) -> Model | None:
        """The candidate expected to cost least for a call of ``task_type``."""
        return min(candidates, key=lambda m: self.predict(m, task_type), default=None)

    def export(self) -> list[tuple[str, str, float, int]]:
        """(model key, task type, average USD, samples), for saving with a project."""
        return [(m, t.value, avg, n) for (m, t), (avg, n) in self._averages.items()]

    def load(self, rows: Iterable[tuple[str, str, float, int]]) -> None:
        """Take saved averages for what this predictor has not measured itself."""
        for model, task_type, average, samples in rows:
            try:
                key = (model, TaskType(task_type))
            except ValueError:
                continue  # a task type this version does not know
            self._averages.setdefault(key, (average, samples))


class RiskLevel(StrEnum):
    LOW = "low"  # under 50 % of the budget
    MEDIUM = "medium"  # 50 to 80 %
    HIGH = "high"  # 80 % or more


@dataclass
class ForecastReport:
    estimated_total_usd: float
    estimated_per_phase: dict[str, float]
    risk_level: RiskLevel
    budget_usd: float
    per_task: dict[str, float] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)


class CostForecaster:
    @staticmethod
    def forecast(
        tasks: Mapping[str, Task] | Iterable[Task],
        profiles: Mapping[str, ModelProfile],
        predictor: CostPredictor | None = None,
        budget: Budget | None = None,
        *,
        router: Router | None = None,
        decomposition: bool = False,
    ) -> ForecastReport:
        """The expected cost of ``tasks`` with the models routing would choose among
        ``profiles`` (by default with the routing table), each call priced by ``predictor``
        (and by what ``profiles`` measured, where that is dearer than the catalog price).

        Each task is counted as one pass of the loop: generate, critique, revise and two
        evaluations; a task that needs more iterations costs more, one that stops at its first
        answer less. With ``decomposition``, the planner's call is added.
        """
        predictor = predictor or CostPredictor()
        budget = budget or Budget()
        task_list = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
        if router is None:
            models = tuple(p.model for p in profiles.values())
            router = Router(Catalog.load(), models, profiles=profiles, cost_model=predictor)
        phases = dict.fromkeys(("decomposition", "generation", "cross_review", "evaluation"), 0.0)
        per_task: dict[str, float] = {}
        if decomposition:
            planner = router.decomposition_chain()[:1]
            phases["decomposition"] = sum(typical_call_usd(m, None) for m in planner)

        def call_usd(model: Model | None, task_type: TaskType) -> float:
            if model is None:
                return 0.0
            return predictor.predict(model, task_type, profiles.get(model.key))

        for task in task_list:
            authors = router.generation_chain(task.type)
            if not authors:
                continue
            author = authors[0]
            critic = next(iter(router.reviewer_chain(task.type, author)[:1]), None)
            evaluator = next(iter(router.evaluator_chain(author)[:1]), None)
            generation = 2 * call_usd(author, task.type)  # the draft and a revision
            review = call_usd(critic, CRITIQUE_TYPE)
            evaluation = 2 * call_usd(evaluator, EVALUATION_TYPE)
            phases["generation"] += generation
            phases["cross_review"] += review
            phases["evaluation"] += evaluation
            per_task[task.id] = generation + review + evaluation
        total = sum(phases.values())
        share = total / budget.max_usd if budget.max_usd > 0 else float("inf")
        risk = RiskLevel.LOW if share < 0.5 else RiskLevel.MEDIUM if share < 0.8 else RiskLevel.HIGH
        assumptions = [
            "one pass of the loop per task (generate, critique, revise, two evaluations); "
            "each further iteration adds about the same again"
        ]
        return ForecastReport(total, phases, risk, budget.max_usd, per_task, assumptions)


class BudgetCapExceeded(ConfigError, ValueError):
    """A run that could take an organisation, team or job past its cap: refused unpaid."""


class BudgetHierarchy:
    """Caps across runs: the organisation's (every project in the state file), each team's and
    each job's, in USD. Spend is what the projects charged to them paid (their journals), so it
    survives restarts; runs of this process in flight also hold what they may still spend, so
    runs started together (an ``AgentPool``) never overshoot a cap between them."""

    def __init__(
        self,
        org_max_usd: float | None = None,
        team_budgets: Mapping[str, float] | None = None,
        job_budgets: Mapping[str, float] | None = None,
    ) -> None:
        self.caps: dict[str, float] = {}
        if org_max_usd is not None:
            self.caps["org"] = float(org_max_usd)
        self.caps.update({f"team:{t}": float(c) for t, c in (team_budgets or {}).items()})
        self.caps.update({f"job:{j}": float(c) for j, c in (job_budgets or {}).items()})
        for scope, cap in self.caps.items():
            if not cap > 0 or cap == float("inf"):
                raise ValueError(f"the {_scope_name(scope)} cap must be a positive amount")
        self._holds: dict[int, tuple[tuple[str, ...], float]] = {}
        self._next_hold = 0

    def hold(
        self,
        spent: Mapping[str, float],
        caps: Mapping[str, float],
        may_spend: float,
        team: str | None,
        job_id: str | None,
    ) -> int:
        """Set ``may_spend`` aside in every scope of the run, or raise ``BudgetCapExceeded``
        naming the first cap it could pass and by how much. ``spent`` is what the scopes paid
        so far, ``caps`` the caps in force (this hierarchy's over the saved ones)."""
        scopes = (
            "org",
            *([f"team:{team}"] if team else []),
            *([f"job:{job_id}"] if job_id else []),
        )
        for scope in scopes:
            cap = caps.get(scope)
            if cap is None:
                continue
            held = sum(
                amount for held_scopes, amount in self._holds.values() if scope in held_scopes
            )
            committed = spent.get(scope, 0.0) + held
            if committed + may_spend > cap + 1e-12:
                over = committed + may_spend - cap
                paid = format_usd(spent.get(scope, 0.0))
                raise BudgetCapExceeded(
                    f"the {_scope_name(scope)} budget of {format_usd(cap)} could be exceeded by "
                    f"{format_usd(over)}: {paid} spent, {format_usd(held)} held by runs in "
                    f"progress, and this run may spend up to {format_usd(may_spend)}"
                )
        self._next_hold += 1
        self._holds[self._next_hold] = (scopes, may_spend)
        return self._next_hold

    def release(self, hold: int) -> None:
        """The run ended: what it spent is in its journal now."""
        self._holds.pop(hold, None)


def _scope_name(scope: str) -> str:
    kind, _, name = scope.partition(":")
    return {"org": "organisation", "team": f"team {name}", "job": f"job {name}"}[kind]
