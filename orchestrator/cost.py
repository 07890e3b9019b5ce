"""``orchestrator.cost``, the design document's path to the forecasts
(:mod:`orchestrator.money.forecast`) and the caps across runs (:mod:`orchestrator.money.caps`)."""

from orchestrator.money.caps import BudgetCapExceeded, BudgetHierarchy
from orchestrator.money.forecast import (
    ASSUMED_CALLS_PER_TASK,
    CRITIQUE_TYPE,
    EVALUATION_TYPE,
    EXPECTED_ANSWER_SHARE,
    EXPECTED_VERDICT_TOKENS,
    INTEGRATION_REQUEST_TOKENS,
    PHASE_NAMES,
    PHASES,
    CostForecaster,
    CostPredictor,
    ForecastReport,
    RiskLevel,
    SpendHistory,
    typical_call_usd,
)

__all__ = [
    "ASSUMED_CALLS_PER_TASK",
    "CRITIQUE_TYPE",
    "EVALUATION_TYPE",
    "EXPECTED_ANSWER_SHARE",
    "EXPECTED_VERDICT_TOKENS",
    "INTEGRATION_REQUEST_TOKENS",
    "PHASES",
    "PHASE_NAMES",
    "BudgetCapExceeded",
    "BudgetHierarchy",
    "CostForecaster",
    "CostPredictor",
    "ForecastReport",
    "RiskLevel",
    "SpendHistory",
    "typical_call_usd",
]
