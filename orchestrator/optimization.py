"""``orchestrator.optimization``:
the design document's path to :mod:`orchestrator.routing.backends`."""

from orchestrator.routing.backends import (
    BACKENDS,
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
