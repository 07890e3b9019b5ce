"""``orchestrator.optimization``:
the design document's path to :mod:`orchestrator.routing.backends`."""

from orchestrator.routing.backends import (
    BACKENDS,
    DEMOTE_AFTER,
    DEMOTED_FOR,
    MIN_COST_USD,
    MIN_PASS_RATE,
    PRIOR_ANSWERS,
    AdaptiveBackend,
    Candidate,
    GreedyBackend,
    OptimizationBackend,
    ParetoBackend,
    Ranked,
    RoutingTableBackend,
    WeightedSumBackend,
)

__all__ = [
    "BACKENDS",
    "DEMOTED_FOR",
    "DEMOTE_AFTER",
    "MIN_COST_USD",
    "MIN_PASS_RATE",
    "PRIOR_ANSWERS",
    "AdaptiveBackend",
    "Candidate",
    "GreedyBackend",
    "OptimizationBackend",
    "ParetoBackend",
    "Ranked",
    "RoutingTableBackend",
    "WeightedSumBackend",
]
