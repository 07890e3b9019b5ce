"""Adaptive routing against an oracle, simulated: passes a dollar, regret, and the cost at equal
pass rate against the best single model.

No HTTP and no run: a world of task types and the catalog's models (their real prices; an
author's call of a task type costs a typical prompt and the routing table's answer limit, as the
router estimates it), each model with a hidden pass rate per task type drawn per seed: the
catalog's quality, less what the task type takes from a small or a large model, give or take
``--spread``; and two surprises a seed: a large model whose code passes 3%, a cheap one whose
extraction passes 97%. Each task of a seed's sequence asks the first model its router ranks; a
failed answer moves the task to the next one, at most ``1 + --fallbacks`` models. An attempt
pays its author's call and, ``--overhead`` times, what its critique and its verdict cost (the
routing table's first critic and evaluator: they are paid whoever wrote the answer). Every
router meets the same tasks and the same dice: an answer of a model to a task passes or fails
alike whoever asked it.

Routers: ``table`` (``RoutingTableBackend``), ``greedy`` (``GreedyBackend``, its profiles'
quality following every judged answer, as evaluation scores move it in a run), ``adaptive``
(``AdaptiveBackend`` itself, each answer judged into its profile, a failure as a failed check;
its candidates carry an attempt's critique and verdict as the router gives them),
``informed`` (``adaptive`` told each task type's difficulty beforehand: its prior for a model at
a type is the mean of the hidden rates of models of its size there, what no router knows), the
``oracle`` (knows the hidden rates: by pass rate per dollar of an attempt among the models
passing at ``MIN_PASS_RATE`` or more, then the rest by pass rate), ``oracle/$`` (the same with
no floor) and ``single``, the best single model (the most expected passes a dollar over the
seed's tasks, asked for everything, again on a failure). Figures are summed over the seeds;
``vs oracle`` is passes a dollar over the oracle's, ``regret`` the oracle's passes a dollar less
the router's, ``vs single`` a pass's cost over the best single model's (the cost at equal pass
rate), ``routing now`` the expected passes a dollar of the last ten tasks' chains at the hidden
rates, over the oracle's. The goal (issue #27): adaptive within 5% of the oracle's passes a
dollar after 30 tasks.

``--by-type`` shows each task type between checkpoints: every router's passes a dollar over
the oracle's, and how often the model it asked first was the oracle's first.
``--prior-answers``, ``--min-pass-rate`` and ``--demote-after`` set the adaptive backend's
constants in this process only; ``--sweep`` tries a grid of them.

    python benchmarks/adaptive_routing.py [--tasks 300] [--seeds 20] [--fallbacks 2] [--by-type]
        [--sweep]
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from orchestrator.llm.catalog import Catalog, Model
from orchestrator.observe.telemetry import TelemetryCollector
from orchestrator.routing import backends, profiles
from orchestrator.routing.backends import (
    AdaptiveBackend,
    Candidate,
    GreedyBackend,
    OptimizationBackend,
    RoutingTableBackend,
)
from orchestrator.routing.profiles import ModelProfile, build_default_profiles, demoted
from orchestrator.routing.router import CRITIQUE_MAX_TOKENS, ROUTING_TABLE, TYPICAL_PROMPT_TOKENS
from orchestrator.run.config import DEFAULT_MAX_FALLBACKS
from orchestrator.run.tasks import TaskType

TYPES = (TaskType.CODE_GEN, TaskType.WRITING, TaskType.DATA_EXTRACT, TaskType.SUMMARIZE)
# What a task type takes off the catalog's quality: (a small model's, a large model's).
HARDER = {
    TaskType.CODE_GEN: (0.35, 0.10),
    TaskType.REASONING: (0.30, 0.10),
    TaskType.WRITING: (0.20, 0.05),
    TaskType.CODE_REVIEW: (0.15, 0.05),
    TaskType.DATA_EXTRACT: (0.10, 0.05),
    TaskType.SUMMARIZE: (0.05, 0.00),
}
REVIEWED_AS = {TaskType.CODE_GEN: TaskType.CODE_REVIEW}  # whose table a critic comes from
LARGE = 0.85  # a catalog quality from which a model counts as large
GOAL_TASKS, GOAL_RATIO = 30, 0.95
WINDOW = 10  # tasks up to a checkpoint whose routing is judged at it
ORACLE_MIN_PASS_RATE = backends.MIN_PASS_RATE  # the oracle's floor, whatever a flag sets
Key = tuple[str, TaskType]


@dataclass(frozen=True)
class World:
    """One seed: the models, their hidden pass rates and call costs, the tasks and the dice."""

    models: tuple[Model, ...]
    rates: dict[Key, float]
    calls: dict[Key, float]  # an author's call, as the router estimates it
    overheads: dict[TaskType, float]  # what an attempt costs besides: its critique, its verdict
    tasks: tuple[TaskType, ...]
    dice: tuple[dict[str, tuple[float, ...]], ...]  # per task, per model: one a try
    surprises: str

    def cost(self, model: Model, kind: TaskType) -> float:
        """What an attempt of ``model`` at a task of ``kind`` costs: its call and the rest."""
        return self.calls[model.key, kind] + self.overheads[kind]


def make_world(
    seed: int,
    catalog: Catalog,
    types: Sequence[TaskType],
    tasks: int,
    tries: int,
    spread: float,
    overhead: float,
) -> World:
    rng = random.Random(seed)
    models = tuple(catalog.models)
    rates: dict[Key, float] = {}
    calls: dict[Key, float] = {}
    for model, kind in itertools.product(models, types):
        small, large = HARDER.get(kind, (0.1, 0.05))
        harder = large if model.quality >= LARGE else small
        rates[model.key, kind] = _clip(model.quality - harder + rng.gauss(0, spread))
        calls[model.key, kind] = model.price.cost(TYPICAL_PROMPT_TOKENS, ROUTING_TABLE[kind][1])
    surprises = []
    if TaskType.CODE_GEN in types:
        broken = rng.choice([m for m in models if m.quality >= LARGE])
        rates[broken.key, TaskType.CODE_GEN] = 0.03
        surprises.append(f"{broken.value}'s code passes 3%")
    if TaskType.DATA_EXTRACT in types:
        cheapest = sorted(models, key=lambda m: calls[m.key, TaskType.DATA_EXTRACT])
        gifted = rng.choice(cheapest[: max(1, len(models) // 3)])
        rates[gifted.key, TaskType.DATA_EXTRACT] = 0.97
        surprises.append(f"{gifted.value}'s extraction passes 97%")
    sequence = tuple(rng.choice(types) for _ in range(tasks))
    dice = tuple(
        {m.key: tuple(rng.random() for _ in range(tries)) for m in models} for _ in sequence
    )
    overheads = {kind: overhead * _overhead(catalog, kind) for kind in types}
    return World(models, rates, calls, overheads, sequence, dice, "; ".join(surprises))


@dataclass(frozen=True)
class Done:
    """One task: what happened, and what its chain was worth at the hidden rates."""

    passed: bool
    cost: float
    expected_pass: float
    expected_cost: float
    kind: TaskType
    first: str  # the key of the model asked first


class Routing:
    """A router: the chain a task of a type asks, and what it learns from each judged answer."""

    name: str

    def chain(self, kind: TaskType) -> list[Model]:
        raise NotImplementedError

    def judged(self, model: Model, kind: TaskType, passed: bool) -> None:
        pass


class ByBackend(Routing):
    """A backend of the package over candidates built as ``Router._select`` builds them."""

    def __init__(self, name: str, backend: OptimizationBackend, world: World, catalog: Catalog):
        self.name, self.backend, self.world = name, backend, world
        self.profiles: dict[str, ModelProfile] = build_default_profiles(catalog)
        self.table = {kind: _table(catalog, kind) for kind in set(world.tasks)}
        # As the router does: a backend that learns weighs whole attempts, and says what a
        # model's record made of it before a failing streak.
        self.learns = bool(getattr(backend, "learns", False))
        self.record = getattr(backend, "rate_before_streak", None)

    def chain(self, kind: TaskType) -> list[Model]:
        table = self.table[kind]
        candidates = [
            Candidate(
                profile=self.profiles[m.key],
                cost_usd=self.world.calls[m.key, kind],
                table_rank=table.index(m.key) if m.key in table else None,
                task_type=kind,
                overhead_usd=self.world.overheads[kind] if self.learns else 0.0,
            )
            for m in self.world.models
        ]
        ranked = [r.model for r in self.backend.rank(candidates)]
        # As the router does for every backend: models whose answers keep failing their checks
        # are held back, after the others.
        held = demoted(self.profiles, kind.value, self.record)
        return [m for m in ranked if m.key not in held] + [m for m in ranked if m.key in held]

    def judged(self, model: Model, kind: TaskType, passed: bool) -> None:
        # As a run records it, whatever the backend: a demotion's clock counts every model's
        # answers of the type; an evaluation's score moves the profile's quality too.
        TelemetryCollector(self.profiles).record_judged(
            model, kind.value, passed, by_checks=not passed
        )
        if not isinstance(self.backend, AdaptiveBackend):
            self.profiles[model.key].record_quality(1.0 if passed else 0.0)


class Informed(Routing):
    """``adaptive`` told each task type's difficulty (``HARDER``) beforehand: its prior for a
    model at a type is the catalog's quality less what the type takes from a model of its size,
    the mean of the model's hidden pass rate there. What no router knows; it shows what learning
    each model's own rate still costs."""

    name = "informed"

    def __init__(self, world: World, catalog: Catalog, seed: int):
        self.by_kind: dict[TaskType, ByBackend] = {}
        for kind in set(world.tasks):
            routing = ByBackend("informed", AdaptiveBackend(seed=seed), world, catalog)
            for profile in routing.profiles.values():
                model = profile.model
                small, large = HARDER.get(kind, (0.1, 0.05))
                harder = large if model.quality >= LARGE else small
                profile.model = replace(model, quality=_clip(model.quality - harder))
            self.by_kind[kind] = routing

    def chain(self, kind: TaskType) -> list[Model]:
        return self.by_kind[kind].chain(kind)

    def judged(self, model: Model, kind: TaskType, passed: bool) -> None:
        self.by_kind[kind].judged(model, kind, passed)


class Oracle(Routing):
    """Knows the hidden rates: by pass rate a dollar among those passing at ``floor`` or more,
    then the rest by pass rate."""

    def __init__(self, world: World, floor: float = ORACLE_MIN_PASS_RATE, name: str = "oracle"):
        self.world, self.floor, self.name = world, floor, name

    def chain(self, kind: TaskType) -> list[Model]:
        def rate(m: Model) -> float:
            return self.world.rates[m.key, kind]

        def per_usd(m: Model) -> float:
            return rate(m) / max(self.world.cost(m, kind), backends.MIN_COST_USD)

        worth = [m for m in self.world.models if rate(m) >= self.floor]
        rest = [m for m in self.world.models if rate(m) < self.floor]
        return sorted(worth, key=per_usd, reverse=True) + sorted(rest, key=rate, reverse=True)


class Single(Routing):
    def __init__(self, model: Model, tries: int):
        self.name, self.model, self.tries = f"single: {model.value}", model, tries

    def chain(self, kind: TaskType) -> list[Model]:
        return [self.model] * self.tries


def simulate(world: World, routing: Routing, tries: int) -> list[Done]:
    done = []
    for kind, dice in zip(world.tasks, world.dice, strict=True):
        chain = routing.chain(kind)[:tries]
        passed, cost = False, 0.0
        for attempt, model in enumerate(chain):
            cost += world.cost(model, kind)
            passed = dice[model.key][attempt] < world.rates[model.key, kind]
            routing.judged(model, kind, passed)
            if passed:
                break
        done.append(Done(passed, cost, *_expected(world, kind, chain), kind, chain[0].key))
    return done


def _expected(world: World, kind: TaskType, chain: Sequence[Model]) -> tuple[float, float]:
    """A chain's chance to pass and its expected cost, at the hidden rates."""
    failing, cost = 1.0, 0.0
    for model in chain:
        cost += failing * world.cost(model, kind)
        failing *= 1 - world.rates[model.key, kind]
    return 1 - failing, cost


def best_single(world: World, tries: int) -> Model:
    """The model with the most expected passes a dollar over the world's tasks, alone."""

    def per_usd(model: Model) -> float:
        figures = [_expected(world, kind, [model] * tries) for kind in world.tasks]
        return sum(p for p, _ in figures) / sum(c for _, c in figures)

    return max(world.models, key=per_usd)


ROUTERS = ("oracle", "oracle/$", "table", "greedy", "adaptive", "informed", "single")


def run_seed(
    seed: int, catalog: Catalog, args: argparse.Namespace, only: Sequence[str] = ROUTERS
) -> tuple[dict[str, list[Done]], World, Model]:
    tries = 1 + args.fallbacks
    world = make_world(seed, catalog, args.types, args.tasks, tries, args.spread, args.overhead)
    single = best_single(world, tries)
    makers: dict[str, Callable[[], Routing]] = {
        "oracle": lambda: Oracle(world),
        "oracle/$": lambda: Oracle(world, floor=0.0, name="oracle/$"),
        "table": lambda: ByBackend("table", RoutingTableBackend(), world, catalog),
        "greedy": lambda: ByBackend("greedy", GreedyBackend(), world, catalog),
        "adaptive": lambda: ByBackend("adaptive", AdaptiveBackend(seed=seed), world, catalog),
        "informed": lambda: Informed(world, catalog, seed),
        "single": lambda: Single(single, tries),
    }
    return {name: simulate(world, makers[name](), tries) for name in only}, world, single


@dataclass(frozen=True)
class Figures:
    passed: float  # a seed's, on average
    dollars: float
    per_usd: float  # over all seeds
    expected_per_usd: float  # of the WINDOW tasks up to the checkpoint, at the hidden rates


def figures(runs: Sequence[Sequence[Done]], upto: int) -> Figures:
    firsts = [run[:upto] for run in runs]
    passed = sum(d.passed for run in firsts for d in run)
    dollars = sum(d.cost for run in firsts for d in run)
    window = [d for run in firsts for d in run[-WINDOW:]]
    expected = sum(d.expected_pass for d in window) / sum(d.expected_cost for d in window)
    return Figures(passed / len(runs), dollars / len(runs), passed / dollars, expected)


def checkpoints(tasks: int) -> list[int]:
    return sorted({n for n in (GOAL_TASKS, 100, 300) if n < tasks} | {tasks})


def set_constants(prior: float, floor: float, demote: int) -> None:
    backends.PRIOR_ANSWERS, backends.MIN_PASS_RATE = prior, floor
    profiles.DEMOTE_AFTER = demote or 10**9  # 0: never demoted


def report(args: argparse.Namespace, catalog: Catalog) -> None:
    by_router: dict[str, list[list[Done]]] = {name: [] for name in ROUTERS}
    singles: list[str] = []
    bests: list[dict[TaskType, str]] = []  # by seed: the oracle's first model for each type
    for seed in range(args.seeds):
        runs, world, single = run_seed(seed, catalog, args)
        for name, done in runs.items():
            by_router[name].append(done)
        singles.append(single.value)
        knows = Oracle(world)
        bests.append({kind: knows.chain(kind)[0].key for kind in set(world.tasks)})
        if seed == 0:
            extra = ", ".join(f"{k.value} ${usd:.4f}" for k, usd in world.overheads.items())
            print(f"an attempt's critique and verdict: {extra}")
            print(f"seed 0: {world.surprises}; best single model {single.value}")
    print(f"best single model by seed: {_counted(singles)}")
    for upto in checkpoints(args.tasks):
        table = {name: figures(runs, upto) for name, runs in by_router.items()}
        oracle, alone = table["oracle"], table["single"]
        print(f"\nafter {upto} tasks (a seed's passes and dollars on average; {WINDOW} tasks up to")
        print("the checkpoint judged at the hidden rates for 'routing now')")
        print(
            f"{'router':<9} {'passed':>7} {'dollars':>8} {'passes/$':>9} {'vs oracle':>9} "
            f"{'regret':>8} {'$ a pass':>9} {'vs single':>9} {'routing now':>11}"
        )
        for name, f in table.items():
            print(
                f"{name:<9} {f.passed:>7.1f} {f.dollars:>8.3f} {f.per_usd:>9.1f} "
                f"{f.per_usd / oracle.per_usd:>9.1%} {oracle.per_usd - f.per_usd:>8.1f} "
                f"{1 / f.per_usd:>9.4f} {alone.per_usd / f.per_usd:>9.2f} "
                f"{f.expected_per_usd / oracle.expected_per_usd:>11.1%}"
            )
    if args.by_type:
        by_type(by_router, bests, checkpoints(args.tasks))
    goal = figures(by_router["adaptive"], GOAL_TASKS)
    goal_oracle = figures(by_router["oracle"], GOAL_TASKS)
    ratio = goal.per_usd / goal_oracle.per_usd
    now = goal.expected_per_usd / goal_oracle.expected_per_usd
    print(
        f"\ngoal: adaptive within 5% of the oracle's passes a dollar after {GOAL_TASKS} tasks: "
        f"{ratio:.1%} over the first {GOAL_TASKS} ({'met' if ratio >= GOAL_RATIO else 'not met'}), "
        f"routing at task {GOAL_TASKS} {now:.1%} ({'met' if now >= GOAL_RATIO else 'not met'})"
    )
    print(
        "'vs single' is a pass's cost at equal pass rate against the best single model's "
        "(under 1: cheaper a pass)"
    )


def by_type(
    by_router: dict[str, list[list[Done]]], bests: Sequence[dict[TaskType, str]], marks: list[int]
) -> None:
    """Each task type's passes a dollar over the oracle's, between checkpoints, and how often
    the model a router asked first was the oracle's first: where a router loses, and whether it
    still does after learning."""
    spans = list(itertools.pairwise([0, *marks]))
    routers = [name for name in by_router if name not in ("oracle", "oracle/$")]
    print(
        "\nby task type, tasks between checkpoints: passes a dollar over the oracle's, and the"
        "\nshare of tasks whose first model asked was the oracle's first"
    )
    print(f"{'type':<17} {'router':<9}" + "".join(f"{f'{lo + 1}-{hi}':>16}" for lo, hi in spans))
    for kind in sorted({d.kind for run in by_router["oracle"] for d in run}, key=TYPES.index):
        for name in routers:
            cells = ""
            for lo, hi in spans:
                mine = _of_kind(by_router[name], kind, lo, hi)
                oracle = _of_kind(by_router["oracle"], kind, lo, hi)
                ratio = _per_usd([d for _, d in mine]) / _per_usd([d for _, d in oracle])
                same = sum(d.first == bests[seed][kind] for seed, d in mine) / max(1, len(mine))
                cells += f"{ratio:>9.1%} {same:>5.0%}"
            print(f"{kind.value:<17} {name:<9}{cells}")


def _of_kind(
    runs: Sequence[Sequence[Done]], kind: TaskType, lo: int, hi: int
) -> list[tuple[int, Done]]:
    """The tasks of ``kind`` from the ``lo``-th to the ``hi``-th of each seed, with its seed."""
    return [(seed, d) for seed, run in enumerate(runs) for d in run[lo:hi] if d.kind is kind]


def _per_usd(done: Sequence[Done]) -> float:
    return sum(d.passed for d in done) / max(sum(d.cost for d in done), backends.MIN_COST_USD)


def sweep(args: argparse.Namespace, catalog: Catalog) -> None:
    """Adaptive with each set of constants, against the oracle, on the same worlds."""
    oracle: list[list[Done]] = []
    for seed in range(args.seeds):
        oracle.append(run_seed(seed, catalog, args, only=("oracle",))[0]["oracle"])
    marks = checkpoints(args.tasks)
    head = "".join(f"{f'@{n}':>8}{'now':>7}" for n in marks)
    print("\nadaptive vs oracle, passes a dollar (cumulative, and routing now), by constants")
    print(f"{'prior':>6} {'floor':>6} {'demote':>7}{head}")
    for prior, floor, demote in itertools.product(
        args.sweep_prior, args.sweep_floor, args.sweep_demote
    ):
        set_constants(prior, floor, demote)
        runs = [
            run_seed(seed, catalog, args, only=("adaptive",))[0]["adaptive"]
            for seed in range(args.seeds)
        ]
        cells = ""
        for n in marks:
            f, o = figures(runs, n), figures(oracle, n)
            cells += f"{f.per_usd / o.per_usd:>8.1%}{f.expected_per_usd / o.expected_per_usd:>7.1%}"
        shown = "off" if demote >= NEVER else str(demote)
        print(f"{prior:>6g} {floor:>6g} {shown:>7}{cells}")


NEVER = 10**6  # --demote-after 0: no demotion


def _overhead(catalog: Catalog, kind: TaskType) -> float:
    """A critique and a verdict of an answer of ``kind``, by the routing table's first critic
    and evaluator."""
    critic = catalog.resolve(ROUTING_TABLE[REVIEWED_AS.get(kind, kind)][0][0])
    evaluator = catalog.resolve(ROUTING_TABLE[TaskType.EVALUATE][0][0])
    return critic.price.cost(TYPICAL_PROMPT_TOKENS, CRITIQUE_MAX_TOKENS) + evaluator.price.cost(
        TYPICAL_PROMPT_TOKENS, ROUTING_TABLE[TaskType.EVALUATE][1]
    )


def _table(catalog: Catalog, kind: TaskType) -> list[str]:
    return [catalog.resolve(name).key for name in ROUTING_TABLE[kind][0]]


def _counted(names: Sequence[str]) -> str:
    counts = {name: names.count(name) for name in sorted(set(names))}
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _clip(rate: float) -> float:
    return min(max(rate, 0.02), 0.98)


def _types(text: str) -> tuple[TaskType, ...]:
    return tuple(TaskType(word.strip()) for word in text.split(","))


def _floats(text: str) -> list[float]:
    return [float(word) for word in text.split(",")]


def _demotions(text: str) -> list[int]:
    return [int(word) or NEVER for word in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300, help="tasks a seed")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--fallbacks", type=int, default=DEFAULT_MAX_FALLBACKS)
    parser.add_argument("--types", type=_types, default=TYPES, help="task types, by value")
    parser.add_argument("--spread", type=float, default=0.15, help="of a hidden pass rate")
    parser.add_argument(
        "--overhead", type=float, default=1.0, help="times a critique and a verdict an attempt"
    )
    parser.add_argument("--prior-answers", type=float, default=backends.PRIOR_ANSWERS)
    parser.add_argument("--min-pass-rate", type=float, default=backends.MIN_PASS_RATE)
    parser.add_argument("--demote-after", type=int, default=profiles.DEMOTE_AFTER, help="0: off")
    parser.add_argument(
        "--by-type",
        action="store_true",
        help="each task type's figures between checkpoints, and how often each router's first "
        "choice was the oracle's",
    )
    parser.add_argument("--sweep", action="store_true", help="adaptive over a grid of constants")
    parser.add_argument("--sweep-prior", type=_floats, default=[0.5, 1, 2, 4, 8])
    parser.add_argument("--sweep-floor", type=_floats, default=[0.5])
    parser.add_argument("--sweep-demote", type=_demotions, default=[2, 3, NEVER])
    args = parser.parse_args()
    if args.tasks < 1 or args.seeds < 1 or args.fallbacks < 0:
        parser.error("--tasks and --seeds must be at least 1, --fallbacks at least 0")
    started = time.perf_counter()
    catalog = Catalog.load(env={})
    demote = args.demote_after or NEVER
    set_constants(args.prior_answers, args.min_pass_rate, demote)
    print(
        f"{len(args.types)} task types ({', '.join(t.value for t in args.types)}) x "
        f"{len(catalog.models)} models, {args.seeds} seeds of {args.tasks} tasks, "
        f"1 + {args.fallbacks} fallbacks a task; adaptive: prior worth {args.prior_answers:g} "
        f"answers, floor {args.min_pass_rate:g}, demoted after "
        f"{'never' if demote >= NEVER else demote}"
    )
    report(args, catalog)
    if args.sweep:
        sweep(args, catalog)
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
