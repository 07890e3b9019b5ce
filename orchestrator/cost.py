"""``orchestrator.cost``, the design document's path to :mod:`orchestrator.money.forecast`."""

from orchestrator.money.forecast import (
    ASSUMED_CALLS_PER_TASK,
    CRITIQUE_TYPE,
    EVALUATION_TYPE,
    EXPECTED_ANSWER_SHARE,
    EXPECTED_VERDICT_TOKENS,
    INTEGRATION_REQUEST_TOKENS,
    PHASE_NAMES,
    PHASES,
    BudgetCapExceeded,
    BudgetHierarchy,
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
