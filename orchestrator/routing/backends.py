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

import math
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
    # What an attempt at the job pays besides this call, whoever writes it: the critique of the
    # answer and the verdicts on it (an author's job under a learning backend; else 0).
    overhead_usd: float = 0.0

    @property
    def model(self) -> Model:
        return self.profile.model

    @property
    def attempt_usd(self) -> float:
        """What one attempt at the job costs with this model: its call and the overhead."""
        return self.cost_usd + self.overhead_usd


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
    passes a dollar of a whole attempt.

    Each candidate's pass rate has a Beta posterior: the catalog's quality as a prior worth
    ``PRIOR_ANSWERS`` answers, then how its answers to this task type were judged (this run's
    and, through the telemetry, earlier runs'). A candidate is ranked on its posterior mean,
    except that each of K candidates is, one time in K, ranked on a draw from its posterior
    instead (Thompson sampling exploring with probability 1/K): every model keeps a chance to
    show what it does, without the work being spread over every model that might be as good,
    as a draw for every candidate spreads it. A model whose latest answer of the type failed its
    checks is not drawn: it has just shown what it does. Either rate is taken times the trust
    the model's calls earned.

    Candidates go first by that rate per dollar of an attempt: the call and what every attempt
    pays besides, its critique and its verdicts (``Candidate.overhead_usd``), since a failed
    answer pays them all again at its revision. Those whose rate is likely under
    ``MIN_PASS_RATE`` (the mean plus one posterior standard deviation is under it) follow by
    rate: a model that fails more often than it passes is no bargain at any price. Ties go to
    the model measured faster.

    The router holds back a model whose answers keep failing their checks, whatever the
    backend; under this one, a model with passes on record only for a failing streak its
    record makes unlikely (``rate_before_streak``). Jobs that write no answer of their own (the
    planner, critics, evaluators) learn nothing here: ``fallback`` orders them.
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
        explore = 1 / len(candidates)
        drawn = [(self.drawn(c, explore), c) for c in candidates]
        worth = [(r, c) for r, c in drawn if r.figures["upper"] >= MIN_PASS_RATE]
        rest = [(r, c) for r, c in drawn if r.figures["upper"] < MIN_PASS_RATE]
        worth.sort(key=lambda rc: (-rc[0].score, _latency(rc[1])))
        rest.sort(key=lambda rc: (-rc[0].figures["drawn"], _latency(rc[1])))
        return [r for r, _ in worth + rest]

    def drawn(self, candidate: Candidate, explore: float = 0.0) -> Ranked:
        """The candidate with the pass rate it is ranked on, and why: its posterior mean, or with
        probability ``explore`` a draw from its posterior."""
        assert candidate.task_type is not None
        profile, kind = candidate.profile, candidate.task_type
        seen = profile.outcomes.get(kind.value)
        passed, failed = (seen.passed, seen.failed) if seen is not None else (0, 0)
        prior = _prior(profile)
        alpha, beta = _posterior(prior, passed, failed)
        mean = alpha / (alpha + beta)
        spread = math.sqrt(alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1)))
        # A model whose latest answer of the type failed its checks is ranked on its record, not
        # explored: a draw is for what it might do, and it has just shown what it does.
        failing = seen is not None and seen.failing_checks > 0
        explored = self.random.random() < explore and not failing
        rate = (self.random.betavariate(alpha, beta) if explored else mean) * profile.trust
        upper = min(1.0, mean + spread) * profile.trust
        attempt = candidate.attempt_usd
        per_usd = rate / max(attempt, MIN_COST_USD)
        figures = {
            "passed": float(passed), "failed": float(failed), "prior": prior, "mean": mean,
            "drawn": rate, "explored": float(explored), "upper": upper,
            "cost_usd": candidate.cost_usd, "attempt_usd": attempt, "passes_per_usd": per_usd,
        }  # fmt: skip
        how = f"drawn {rate:.2f}" if explored else "not drawn: ranked on its mean"
        paid = f"{_usd(attempt)} an attempt"
        if candidate.overhead_usd:
            paid += f" (the call {_usd(candidate.cost_usd)})"
        reason = (
            f"{kind.value} passed {passed} of {passed + failed} (prior {prior:.2f}): mean "
            f"{mean:.2f}, {how}; {paid} = {per_usd:,.0f} passes a dollar"
        )
        if upper < MIN_PASS_RATE:
            reason += f"; likely under {MIN_PASS_RATE:.0%}: after those likelier to pass"
        return Ranked(candidate.model, per_usd, reason, figures)

    def rate_before_streak(self, profile: ModelProfile, task_type: str) -> float | None:
        """Its pass rate at ``task_type`` as its record had it before its latest answers failed
        their checks in a row (the posterior mean); None with no pass on record. The router
        holds a model back only for a failing streak this rate makes unlikely."""
        seen = profile.outcomes.get(task_type)
        if seen is None or not seen.passed:
            return None
        alpha, beta = _posterior(_prior(profile), seen.passed, seen.failed - seen.failing_checks)
        return alpha / (alpha + beta)


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
# A model whose pass rate is likely under this (its posterior mean plus one standard deviation
# is) goes after every candidate likelier to pass, however cheap.
MIN_PASS_RATE = 0.5

# A model that costs nothing (a local endpoint) still has to be divided by something.
MIN_COST_USD = 1e-7


def _prior(profile: ModelProfile) -> float:
    """The catalog's quality, kept off 0 and 1 so that evidence can always move it."""
    return min(max(profile.model.quality, 0.05), 0.95)


def _posterior(prior: float, passed: int, failed: int) -> tuple[float, float]:
    """The Beta posterior of a pass rate: ``prior`` worth ``PRIOR_ANSWERS`` answers, then these."""
    return PRIOR_ANSWERS * prior + passed, PRIOR_ANSWERS * (1 - prior) + max(failed, 0)


def _latency(c: Candidate) -> float:
    """For a tie: the measured latency, a model not measured yet after those that were."""
    latency = c.profile.latency_ms
    return math.inf if latency is None else latency


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
