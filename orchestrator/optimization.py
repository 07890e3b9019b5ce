"""``orchestrator.optimization``:
the design document's path to :mod:`orchestrator.routing.backends`."""

from orchestrator.routing.backends import (
    BACKENDS,
    MIN_COST_USD,
    MIN_PASS_RATE,
    MODEL_ANSWERS,
    PRIOR_ANSWERS,
    QUALITY_BANDWIDTH,
    TYPE_ANSWERS,
    AdaptiveBackend,
    Candidate,
    GreedyBackend,
    OptimizationBackend,
    ParetoBackend,
    Ranked,
    RoutingTableBackend,
    WeightedSumBackend,
    type_offset,
)

__all__ = [
    "BACKENDS",
    "MIN_COST_USD",
    "MIN_PASS_RATE",
    "MODEL_ANSWERS",
    "PRIOR_ANSWERS",
    "QUALITY_BANDWIDTH",
    "TYPE_ANSWERS",
    "AdaptiveBackend",
    "Candidate",
    "GreedyBackend",
    "OptimizationBackend",
    "ParetoBackend",
    "Ranked",
    "RoutingTableBackend",
    "WeightedSumBackend",
    "type_offset",
]
