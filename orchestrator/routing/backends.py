"""Routing backends: how the models that may do a job are put in order, each with its reason.

Every backend ranks the same candidates (the usable, healthy models the policies allow, with the
routing table's position and an estimated cost per call for the job) and says why each one is
where it is. ``RoutingTableBackend`` is the default: the design's routing table, then the
cheapest other models. The others rank on the models' profiles (``orchestrator.routing.profiles``):
``GreedyBackend`` on quality x trust / cost, ``WeightedSumBackend`` on a weighted sum of
normalised quality, trust, cost and latency, ``ParetoBackend`` on the non-dominated set first.
``AdaptiveBackend`` learns which model passes each task type's checks for the least money.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from orchestrator.llm.catalog import Model
    from orchestrator.routing.profiles import ModelProfile
    from orchestrator.run.tasks import TaskType


@dataclass(frozen=True)
class Candidate:
    """One model that may do a job: its profile, what a call of the job is expected to cost, and
    its position in the routing table's list for the job (``None``: not listed)."""

    profile: ModelProfile
    cost_usd: float
    table_rank: int | None = None
    # The task type whose answers the job writes (an author's job), for backends that learn
    # from how answers were judged; None for the planner, critics and evaluators.
    task_type: TaskType | None = None

    @property
    def model(self) -> Model:
        return self.profile.model


@dataclass(frozen=True)
class Ranked:
    model: Model
    score: float
    reason: str
    # The figures behind the place, for the audit record (a learning backend's posterior).
    figures: Mapping[str, float] = field(default_factory=dict)


class OptimizationBackend(Protocol):
    name: str

    def rank(self, candidates: Sequence[Candidate]) -> list[Ranked]:
        """Every candidate, best first, with the reason for its place."""
        ...


class RoutingTableBackend:
    """The design's routing table for the job, then every other model from the cheapest up."""

    name = "table"

    def rank(self, candidates: Sequence[Candidate]) -> list[Ranked]:
        listed = sorted((c for c in candidates if c.table_rank is not None), key=_table_rank)
        others = sorted((c for c in candidates if c.table_rank is None), key=_cost)
        ranked = [
            Ranked(c.model, -float(position), f"routing table choice {position + 1}")
            for position, c in enumerate(listed)
        ]
        ranked += [
            Ranked(c.model, -c.cost_usd, f"not in the routing table; {_usd(c.cost_usd)} a call")
            for c in others
        ]
        return ranked


class GreedyBackend:
    """Highest quality x trust per dollar first."""

    name = "greedy"

    def rank(self, candidates: Sequence[Candidate]) -> list[Ranked]:
        ranked = []
        for c in candidates:
            p = c.profile
            score = p.quality * p.trust / max(c.cost_usd, MIN_COST_USD)
            reason = (
                f"quality {p.quality:.2f} x trust {p.trust:.2f} / {_usd(c.cost_usd)} a call "
                f"= {score:,.0f}"
            )
            ranked.append(Ranked(c.model, score, reason))
        return _best_first(ranked)


class WeightedSumBackend:
    """A weighted sum of quality, trust, cheapness and speed, each scaled 0-1 across the
    candidates (a latency not measured yet counts as average)."""

    name = "weighted"

    def __init__(
        self,
        w_quality: float = 0.4,
        w_trust: float = 0.2,
        w_cost: float = 0.3,
        w_latency: float = 0.1,
    ) -> None:
        weights = (w_quality, w_trust, w_cost, w_latency)
        if any(w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError("weights must be non-negative and not all zero")
        self.weights = weights

    def rank(self, candidates: Sequence[Candidate]) -> list[Ranked]:
        return _best_first([self.scored(c, candidates) for c in candidates])

    def scored(self, candidate: Candidate, among: Sequence[Candidate]) -> Ranked:
        p = candidate.profile
        parts = (
            ("quality", _scaled(p.quality, [c.profile.quality for c in among])),
            ("trust", _scaled(p.trust, [c.profile.trust for c in among])),
            ("cost", 1 - _scaled(candidate.cost_usd, [c.cost_usd for c in among])),
            ("speed", _speed(p.latency_ms, [c.profile.latency_ms for c in among])),
        )
        weighted = list(zip(self.weights, parts, strict=True))
        score = sum(w * value for w, (_, value) in weighted) / sum(self.weights)
        detail = ", ".join(f"{name} {value:.2f}x{w:g}" for w, (name, value) in weighted)
        return Ranked(candidate.model, score, f"weighted {score:.3f} ({detail})")


class ParetoBackend:
    """The candidates no other beats on quality, trust, cost and latency at once, then the
    rest; each group ordered by a weighted sum (``scoring``)."""

    name = "pareto"

    def __init__(self, scoring: WeightedSumBackend | None = None) -> None:
        self.scoring = scoring or WeightedSumBackend()

    def rank(self, candidates: Sequence[Candidate]) -> list[Ranked]:
        front, dominated = [], []
        for c in candidates:
            better = next((o for o in candidates if _dominates(o, c)), None)
            scored = self.scoring.scored(c, candidates)
            if better is None:
                front.append(Ranked(c.model, scored.score, f"on the Pareto front; {scored.reason}"))
            else:
                why = f"dominated by {better.model.value}; {scored.reason}"
                dominated.append(Ranked(c.model, scored.score, why))
        return _best_first(front) + _best_first(dominated)


class AdaptiveBackend:
    """Learns, per task type and model, which model passes its checks for the least money:
    Thompson sampling over passes a dollar.

    For each candidate a pass rate is drawn from its Beta posterior: the catalog's quality as a
    prior worth ``PRIOR_ANSWERS`` answers, then how its answers to this task type were judged
    (this run's and, through the telemetry, earlier runs'), times its calls' trust. Candidates
    drawn at ``MIN_PASS_RATE`` or more go first, by drawn rate per dollar of a call (the
    measured cost once there is one); the rest follow by drawn rate, since a model that fails
    more often than it passes is no bargain at any price. (A model whose answers keep failing
    their checks is held back by the router, whatever the backend.) Jobs that write no answer of
    their own (the planner, critics, evaluators) learn nothing here: ``fallback`` orders them.
    """

    name = "adaptive"
    # It ranks by how answers were judged: a run keeps what it learned with each task's
    # checkpoint.
    learns = True

    def __init__(self, seed: int | None = None, fallback: OptimizationBackend | None = None):
        self.random = random.Random(seed)
        self.fallback = fallback if fallback is not None else RoutingTableBackend()

    def rank(self, candidates: Sequence[Candidate]) -> list[Ranked]:
        if not candidates or any(c.task_type is None for c in candidates):
            return self.fallback.rank(candidates)
        drawn = [self.drawn(c) for c in candidates]
        worth = [r for r in drawn if r.figures["drawn"] >= MIN_PASS_RATE]
        rest = [r for r in drawn if r.figures["drawn"] < MIN_PASS_RATE]
        return _best_first(worth) + sorted(rest, key=lambda r: -r.figures["drawn"])

    def drawn(self, candidate: Candidate) -> Ranked:
        """The candidate with a pass rate drawn from its posterior, and why."""
        assert candidate.task_type is not None
        profile, kind = candidate.profile, candidate.task_type
        seen = profile.outcomes.get(kind.value)
        passed, failed = (seen.passed, seen.failed) if seen is not None else (0, 0)
        prior = min(max(profile.model.quality, 0.05), 0.95)
        alpha = PRIOR_ANSWERS * prior + passed
        beta = PRIOR_ANSWERS * (1 - prior) + failed
        rate = self.random.betavariate(alpha, beta) * profile.trust
        per_usd = rate / max(candidate.cost_usd, MIN_COST_USD)
        figures = {
            "passed": float(passed), "failed": float(failed), "prior": prior,
            "mean": alpha / (alpha + beta), "drawn": rate, "cost_usd": candidate.cost_usd,
            "passes_per_usd": per_usd,
        }  # fmt: skip
        reason = (
            f"{kind.value} passed {passed} of {passed + failed} (prior {prior:.2f}): mean "
            f"{figures['mean']:.2f}, drawn {rate:.2f}; {_usd(candidate.cost_usd)} a call = "
            f"{per_usd:,.0f} passes a dollar"
        )
        if rate < MIN_PASS_RATE:
            reason += f"; drawn under {MIN_PASS_RATE:.0%}: after those likelier to pass"
        return Ranked(candidate.model, per_usd, reason, figures)


BACKENDS: dict[str, type[OptimizationBackend]] = {
    backend.name: backend
    for backend in (
        RoutingTableBackend,
        GreedyBackend,
        WeightedSumBackend,
        ParetoBackend,
        AdaptiveBackend,
    )
}

# What the catalog's quality prior is worth, in answers seen.
PRIOR_ANSWERS = 4.0
# A drawn pass rate under this goes after every candidate likelier to pass, however cheap.
MIN_PASS_RATE = 0.5

# A model that costs nothing (a local endpoint) still has to be divided by something.
MIN_COST_USD = 1e-7


def _dominates(a: Candidate, b: Candidate) -> bool:
    """Whether ``a`` is at least as good as ``b`` on every objective and better on one."""
    pa, pb = a.profile, b.profile
    la, lb = pa.latency_ms, pb.latency_ms
    at_least = (
        pa.quality >= pb.quality
        and pa.trust >= pb.trust
        and a.cost_usd <= b.cost_usd
        and (la is None or lb is None or la <= lb)
    )
    better = (
        pa.quality > pb.quality
        or pa.trust > pb.trust
        or a.cost_usd < b.cost_usd
        or (la is not None and lb is not None and la < lb)
    )
    return at_least and better


def _scaled(value: float, values: Sequence[float]) -> float:
    low, high = min(values), max(values)
    return 0.5 if high == low else (value - low) / (high - low)


def _speed(latency: float | None, latencies: Sequence[float | None]) -> float:
    known = [x for x in latencies if x is not None]
    if latency is None or not known:
        return 0.5
    return 1 - _scaled(latency, known)


def _best_first(ranked: list[Ranked]) -> list[Ranked]:
    return sorted(ranked, key=lambda r: -r.score)  # stable: ties keep the candidates' order


def _table_rank(c: Candidate) -> int:
    return c.table_rank if c.table_rank is not None else 0


def _cost(c: Candidate) -> tuple[float, float]:
    return (c.cost_usd, c.model.price.output)


def _usd(value: float) -> str:
    return f"${value:.2g}" if value < 0.01 else f"${value:.3f}"
