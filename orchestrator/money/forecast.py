"""The cost layer: what calls are expected to cost, and what a project is expected to cost.

``CostPredictor`` keeps a moving average of what each (model, task type) call really cost, with
the catalog price of a typical call as the fallback (raised to what telemetry measured the
model's calls to cost when that is more); routing and forecasts use it, the engine feeds it
every answered paid call, and it is saved with the project. ``CostForecaster`` adds up what a
task list is expected to cost and the most it can cost with the models routing would pick,
before anything is paid, from what earlier runs measured (``SpendHistory``, the predictor,
telemetry) where there is some and from catalog prices elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from orchestrator.code.integration import INTEGRATION_PHASE
from orchestrator.llm.answers import MAX_CONTINUATIONS
from orchestrator.llm.catalog import Catalog, Model
from orchestrator.llm.context_window import prompt_token_bound
from orchestrator.llm.providers.base import ChatRequest, Message
from orchestrator.money.budget import Budget
from orchestrator.routing.profiles import ModelProfile
from orchestrator.routing.router import (
    CRITIQUE_MAX_TOKENS,
    DECOMPOSITION_MAX_TOKENS,
    ROLE_TASK_TYPES,
    ROUTING_TABLE,
    TYPICAL_PROMPT_TOKENS,
    Router,
    at_least_measured,
)
from orchestrator.run.config import DEFAULT_ROUNDS
from orchestrator.run.prompts import DECOMPOSE_SYSTEM, DECOMPOSE_USER, GENERATE_SYSTEM, task_prompt
from orchestrator.run.tasks import Task, TaskType
from orchestrator.text.tokens import typical_tokens

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
        (``orchestrator.routing.router.at_least_measured``)."""
        # A task type is a str enum: its value finds its entry as well (no conversion per call).
        known = self._averages.get((model.key, task_type))
        if known is not None:
            return known[0]
        return at_least_measured(typical_call_usd(model, TaskType(task_type)), profile)

    def samples(self, model: Model, task_type: TaskType) -> int:
        known = self._averages.get((model.key, task_type))
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


# A typical answer fills this share of its request's output limit, and a verdict (a score and
# a short reasoning) takes this many tokens, until earlier runs measured what calls cost.
EXPECTED_ANSWER_SHARE = 0.25
EXPECTED_VERDICT_TOKENS = 150
# What an integration round's request (the project's failed checks) is assumed to add.
INTEGRATION_REQUEST_TOKENS = TYPICAL_PROMPT_TOKENS
# Paid calls per task and phase a typical figure assumes until earlier runs measured them: a
# draft and one revision, one critique, the two verdicts, no integration revision.
ASSUMED_CALLS_PER_TASK = {"generation": 2, "cross_review": 1, "evaluation": 2, INTEGRATION_PHASE: 0}
PHASES = ("decomposition", "generation", "cross_review", "evaluation", "integration")
# The journal's name for the partition integration revisions are paid from, and the report's.
PHASE_NAMES = {INTEGRATION_PHASE: "integration"}


@dataclass
class SpendHistory:
    """What earlier runs' journals measured: paid calls per finished task by task type and
    phase, and what planning a project cost."""

    calls_per_task: dict[tuple[TaskType, str], float] = field(default_factory=dict)
    tasks_measured: dict[TaskType, int] = field(default_factory=dict)
    planning_usd: float | None = None  # the mean over planned projects

    @classmethod
    def from_journal(
        cls,
        task_calls: Iterable[tuple[str, str, str, str, int]],
        planning: Sequence[float] = (),
    ) -> SpendHistory:
        """From ``(project id, task id, task type, phase, paid calls)`` rows of finished tasks
        and the planning spend of each planned project."""
        calls: dict[tuple[TaskType, str], int] = {}
        tasks: dict[TaskType, set[tuple[str, str]]] = {}
        for project_id, task_id, type_name, phase, count in task_calls:
            try:
                task_type = TaskType(type_name)
            except ValueError:
                continue  # a task type this version does not know
            tasks.setdefault(task_type, set()).add((project_id, task_id))
            calls[(task_type, phase)] = calls.get((task_type, phase), 0) + count
        measured = {t: len(ids) for t, ids in tasks.items()}
        per_task = {(t, phase): n / measured[t] for (t, phase), n in calls.items()}
        planned = sum(planning) / len(planning) if planning else None
        return cls(per_task, measured, planned)

    def calls(self, task_type: TaskType, phase: str) -> float | None:
        """Mean paid calls of a finished task of ``task_type`` in ``phase``; None: unmeasured."""
        if task_type not in self.tasks_measured:
            return None
        return self.calls_per_task.get((task_type, phase), 0.0)


@dataclass
class ForecastReport:
    """What a project is expected to cost (``typical_usd``, the same as
    ``estimated_total_usd``) and the most it can cost (``high_usd``: the worst the run's limits
    allow, ``worst_usd``, capped by the budget, where a run stops BUDGET_EXHAUSTED)."""

    estimated_total_usd: float
    estimated_per_phase: dict[str, float]
    risk_level: RiskLevel
    budget_usd: float
    per_task: dict[str, float] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)
    high_usd: float = 0.0
    worst_usd: float = 0.0
    high_per_phase: dict[str, float] = field(default_factory=dict)
    learned: list[str] = field(default_factory=list)  # the figures earlier runs measured
    priced: list[str] = field(default_factory=list)  # the figures priced from the catalog
    models: list[Model] = field(default_factory=list)  # routing's choices, in order of use

    @property
    def typical_usd(self) -> float:
        return self.estimated_total_usd

    @property
    def passes_budget(self) -> bool:
        """Whether the run's limits allow it to spend past its budget (it would stop there)."""
        return self.worst_usd > self.budget_usd


@dataclass(frozen=True)
class _Tokens:
    """A call's prompt and answer lengths, expected and at most."""

    typical_prompt: int
    typical_output: int
    high_prompt: int
    output_limit: int
    prose: bool = True  # cut off, prose is continued (MAX_CONTINUATIONS); JSON is repaired once


def _text_tokens(text: str) -> tuple[int, int]:
    """(expected, at most) tokens of ``text`` as a prompt: ``typical_tokens``, and at most what
    the client reserves for it (``prompt_token_bound``)."""
    request = ChatRequest(messages=(Message("user", text),), max_tokens=1)
    return typical_tokens(text), prompt_token_bound(request)


def _worst_answer_usd(model: Model, call: _Tokens) -> float:
    """The most one answer can cost: every request at its output limit, prose continued as
    often as the client continues it (each continuation's prompt carries what came before),
    JSON repaired once; prompts no longer than the model's window allows."""
    limit = min(call.output_limit, model.max_output_tokens)
    requests = 1 + MAX_CONTINUATIONS if call.prose else 2
    total = 0.0
    for n in range(requests):
        prompt = min(call.high_prompt + n * limit, max(0, model.context_window - limit))
        total += model.price.cost(prompt, limit)
    return total


class _Pricer:
    """Prices one call of a phase: what earlier runs measured the model's calls of its task
    type to cost, else what telemetry measured any of its calls to cost, else the catalog price
    of the expected lengths; remembering which figures were learned."""

    def __init__(self, predictor: CostPredictor, profiles: Mapping[str, ModelProfile]) -> None:
        self.predictor = predictor
        self.profiles = profiles
        self.learned: set[str] = set()
        self.priced: set[str] = set()

    def typical(self, model: Model, priced_as: TaskType, call: _Tokens) -> float:
        if model.price.free:
            return 0.0  # a local model: measured averages of other runs cannot make it cost
        if self.predictor.samples(model, priced_as):
            self.learned.add(f"cost per call of {model.value} for {priced_as.value}")
            return self.predictor.predict(model, priced_as)
        profile = self.profiles.get(model.key)
        if profile is not None and profile.cost_avg_usd is not None:
            self.learned.add(f"cost per call of {model.value} (its telemetry)")
            return profile.cost_avg_usd
        self.priced.add(f"cost per call of {model.value}")
        return model.price.cost(call.typical_prompt, call.typical_output)


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
        history: SpendHistory | None = None,
        integration_rounds: int = DEFAULT_ROUNDS,
        description: str = "",
        criteria: str = "",
    ) -> ForecastReport:
        """What ``tasks`` are expected to cost with the models routing would choose among
        ``profiles`` (by default with the routing table), and the most they can cost.

        The typical figure counts, per task, the paid calls of each phase that earlier runs
        measured for its task type (``history``; else a draft, one critique, one revision and
        two verdicts), each priced as ``predictor`` or ``profiles`` measured the model's calls
        (else the catalog price of expected answer lengths). The high figure counts every
        iteration (critique, revision, three verdicts), ``integration_rounds`` revisions, every
        request at its output limit and continued, at the dearest of the chain's choice and
        fallbacks; capped by ``budget``. With ``decomposition``, the planner's call is added.
        """
        predictor = predictor or CostPredictor()
        budget = budget or Budget()
        history = history or SpendHistory()
        task_list = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
        if router is None:
            models = tuple(p.model for p in profiles.values())
            router = Router(Catalog.load(), models, profiles=profiles, cost_model=predictor)
        router = replace(router, on_decision=None)  # a forecast's choices are reported to nobody
        pricer = _Pricer(predictor, profiles)
        estimate = _Estimate(router, pricer, history, integration_rounds, description, criteria)
        if decomposition:
            estimate.add_planning()
        by_id = {task.id: task for task in task_list}
        for task in task_list:
            estimate.add_task(task, [by_id[d] for d in task.dependencies if d in by_id])
        return estimate.report(budget)


class _Estimate:
    """A forecast being added up, phase by phase, typical and high."""

    def __init__(
        self,
        router: Router,
        pricer: _Pricer,
        history: SpendHistory,
        integration_rounds: int,
        description: str,
        criteria: str,
    ) -> None:
        self.router = router
        self.pricer = pricer
        self.history = history
        self.rounds = integration_rounds
        self.description = description
        self.criteria = criteria
        self.typical = dict.fromkeys(PHASES, 0.0)
        self.high = dict.fromkeys(PHASES, 0.0)
        self.per_task: dict[str, float] = {}
        self.counts_learned: set[TaskType] = set()
        self.counts_assumed: set[TaskType] = set()
        self.chosen: dict[Model, None] = {}  # the first choice of every chain, in order

    def add_planning(self) -> None:
        planners = self.router.decomposition_chain()
        if not planners:
            return
        expected, at_most = _text_tokens(
            DECOMPOSE_SYSTEM + DECOMPOSE_USER.format(description=self.description,
                                                     criteria=self.criteria)
        )  # fmt: skip
        output = int(DECOMPOSITION_MAX_TOKENS * EXPECTED_ANSWER_SHARE)
        call = _Tokens(expected, output, at_most, DECOMPOSITION_MAX_TOKENS, prose=False)
        planner = planners[0]
        self.chosen[planner] = None
        if planner.price.free:
            typical = 0.0
        elif self.history.planning_usd is not None:
            self.pricer.learned.add("the planner's spend per project")
            typical = self.history.planning_usd
        else:
            self.pricer.priced.add("the planner's call")
            typical = planner.price.cost(call.typical_prompt, call.typical_output)
        self.typical["decomposition"] = typical
        # Each planner asked is paid for: the chain (the choice and its fallbacks, as the
        # router bounds it) is walked while plans are unusable.
        worst = sum(_worst_answer_usd(m, call) for m in planners)
        self.high["decomposition"] = max(worst, typical)

    def add_task(self, task: Task, dependencies: Sequence[Task]) -> None:
        authors = self.router.generation_chain(task.type)
        if not authors:
            return
        author = authors[0]
        critics = [m for m in self.router.reviewer_chain(task.type, author) if m != author]
        evaluators = self.router.evaluator_chain(author)
        calls = self._calls(task, dependencies)
        roles = {
            "generation": (authors, task.type, calls["revision"]),
            "cross_review": (critics, CRITIQUE_TYPE, calls["critique"]),
            "evaluation": (evaluators, EVALUATION_TYPE, calls["evaluation"]),
            INTEGRATION_PHASE: (authors, task.type, calls["integration"]),
        }
        iterations = task.type.max_iterations
        worst_counts = {
            "generation": 1 + iterations,  # the draft, then a revision each iteration
            "cross_review": iterations,
            "evaluation": 3 * iterations,  # two verdicts, and a third when they disagree
            INTEGRATION_PHASE: self.rounds,
        }
        typical_total = 0.0
        for phase, (chain, priced_as, call) in roles.items():
            if not chain:
                continue
            self.chosen[chain[0]] = None
            count = self._typical_count(task.type, phase)
            typical = count * self.pricer.typical(chain[0], priced_as, call)
            worst_ask = max(_worst_answer_usd(m, call) for m in chain)
            high = max(worst_counts[phase] * worst_ask, typical)
            name = PHASE_NAMES.get(phase, phase)
            self.typical[name] += typical
            self.high[name] += high
            typical_total += typical
        self.per_task[task.id] = typical_total

    def _typical_count(self, task_type: TaskType, phase: str) -> float:
        measured = self.history.calls(task_type, phase)
        if measured is None:
            self.counts_assumed.add(task_type)
            return ASSUMED_CALLS_PER_TASK[phase]
        self.counts_learned.add(task_type)
        return measured

    def _calls(self, task: Task, dependencies: Sequence[Task]) -> dict[str, _Tokens]:
        """The lengths of each kind of call a task makes (revision: the longest of its
        generation calls, which prices them all)."""
        limit = ROUTING_TABLE[task.type][1]
        answer = int(limit * EXPECTED_ANSWER_SHARE)
        answer_high = limit * (1 + MAX_CONTINUATIONS)
        critique = int(CRITIQUE_MAX_TOKENS * EXPECTED_ANSWER_SHARE)
        critique_high = CRITIQUE_MAX_TOKENS * (1 + MAX_CONTINUATIONS)
        verdict_limit = ROUTING_TABLE[TaskType.EVALUATE][1]
        context = sum(int(ROUTING_TABLE[d.type][1] * EXPECTED_ANSWER_SHARE) for d in dependencies)
        context_high = sum(ROUTING_TABLE[d.type][1] * (1 + MAX_CONTINUATIONS) for d in dependencies)
        own, own_high = _text_tokens(
            max(GENERATE_SYSTEM.values(), key=len)
            + task_prompt(task, self.description, self.criteria, "")
        )
        prompt, prompt_high = own + context, own_high + context_high
        return {
            "revision": _Tokens(
                prompt + answer + critique + EXPECTED_VERDICT_TOKENS,
                answer,
                prompt_high + answer_high + critique_high + verdict_limit,
                limit,
            ),
            "critique": _Tokens(
                prompt + answer, critique, prompt_high + answer_high, CRITIQUE_MAX_TOKENS
            ),
            "evaluation": _Tokens(
                prompt + answer,
                EXPECTED_VERDICT_TOKENS,
                prompt_high + answer_high,
                verdict_limit,
                prose=False,
            ),
            "integration": _Tokens(
                own + answer + INTEGRATION_REQUEST_TOKENS,
                answer,
                own_high + answer_high + INTEGRATION_REQUEST_TOKENS,
                limit,
            ),
        }

    def report(self, budget: Budget) -> ForecastReport:
        typical = sum(self.typical.values())
        worst = sum(self.high.values())
        share = typical / budget.max_usd if budget.max_usd > 0 else float("inf")
        risk = RiskLevel.LOW if share < 0.5 else RiskLevel.MEDIUM if share < 0.8 else RiskLevel.HIGH
        return ForecastReport(
            estimated_total_usd=typical,
            estimated_per_phase=dict(self.typical),
            risk_level=risk,
            budget_usd=budget.max_usd,
            per_task=dict(self.per_task),
            assumptions=self._assumptions(),
            high_usd=min(worst, budget.max_usd),
            worst_usd=worst,
            high_per_phase=dict(self.high),
            learned=sorted(self.pricer.learned) + self._counts(self.counts_learned),
            priced=sorted(self.pricer.priced),
            models=list(self.chosen),
        )

    def _counts(self, task_types: set[TaskType]) -> list[str]:
        if not task_types:
            return []
        measured = ", ".join(
            f"{t.value} ({_tasks(self.history.tasks_measured[t])})" for t in sorted(task_types)
        )
        return [f"paid calls per task of {measured}"]

    def _assumptions(self) -> list[str]:
        lines = []
        if self.counts_assumed:
            kinds = ", ".join(t.value for t in sorted(self.counts_assumed))
            lines.append(
                f"typical: a draft, one critique, one revision and two verdicts per task ({kinds}; "
                f"no earlier run measured them), answers a quarter of their output limit"
            )
        lines.append(
            "high: every iteration (a critique, a revision and three verdicts each), "
            f"{self.rounds} integration round(s) revising every task, every request at its "
            f"output limit and continued {MAX_CONTINUATIONS} times, at the dearest of its "
            f"model and {self.router.max_fallbacks} fallback(s); a failed call before a fallback "
            "counted unpaid"
        )
        return lines


def _tasks(count: int) -> str:
    return "1 task" if count == 1 else f"{count} tasks"
