"""``ConstraintPlanner``: which candidates a model choice may take, under the policies and the
budget left, and why each of the others may not (or goes last)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from orchestrator.llm.catalog import Model
from orchestrator.routing.backends import Candidate
from orchestrator.routing.policy import PolicyEngine, Violation


@dataclass
class Screened:
    allowed: list[Candidate] = field(default_factory=list)
    excluded: list[tuple[Model, str]] = field(default_factory=list)  # blocked by a policy
    unaffordable: set[str] = field(default_factory=set)  # model keys: over the budget left
    # What the allowed models still violate (SOFT cost or latency rules, MONITOR): recorded.
    violations: dict[str, list[Violation]] = field(default_factory=dict)


class ConstraintPlanner:
    """Screens a choice's candidates: a model a policy blocks is excluded, with the policy and
    the rule; one whose estimated call costs more than the budget left goes to the back of the
    chain (a call is only made once its worst case is reserved anyway)."""

    def __init__(
        self,
        policies: PolicyEngine | None = None,
        budget_left: Callable[[], float] | None = None,
    ) -> None:
        self.policies = policies or PolicyEngine()
        self.budget_left = budget_left

    def screen(self, candidates: Sequence[Candidate]) -> Screened:
        screened = Screened()
        left = self.budget_left() if self.budget_left is not None else None
        for candidate in candidates:
            violations = self.policies.check(candidate.profile, candidate.cost_usd)
            if PolicyEngine.blocked(violations):
                why = "; ".join(str(v) for v in violations if v.blocking)
                screened.excluded.append((candidate.model, f"excluded by policy {why}"))
                continue
            screened.allowed.append(candidate)
            if violations:
                screened.violations[candidate.model.key] = violations
            if left is not None and candidate.cost_usd > left:
                screened.unaffordable.add(candidate.model.key)
        return screened
