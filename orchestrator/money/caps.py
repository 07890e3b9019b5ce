"""Caps across runs: the organisation's, each team's and each job's, held against what their
projects paid and what runs in flight may still spend."""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.errors import ConfigError
from orchestrator.money.units import format_usd, nanos_to_usd, usd_to_nanos


class BudgetCapExceeded(ConfigError, ValueError):
    """A run that could take an organisation, team or job past its cap: refused unpaid."""


class BudgetHierarchy:
    """Caps across runs: the organisation's (every project in the state file), each team's and
    each job's, in USD. Spend is what the projects charged to them paid (their journals), so it
    survives restarts; runs of this process in flight also hold what they may still spend, so
    runs started together (an ``AgentPool``) never overshoot a cap between them."""

    def __init__(
        self,
        org_max_usd: float | None = None,
        team_budgets: Mapping[str, float] | None = None,
        job_budgets: Mapping[str, float] | None = None,
    ) -> None:
        self.caps: dict[str, float] = {}
        if org_max_usd is not None:
            self.caps["org"] = float(org_max_usd)
        self.caps.update({f"team:{t}": float(c) for t, c in (team_budgets or {}).items()})
        self.caps.update({f"job:{j}": float(c) for j, c in (job_budgets or {}).items()})
        for scope, cap in self.caps.items():
            if not cap > 0 or cap == float("inf"):
                raise ValueError(f"the {_scope_name(scope)} cap must be a positive amount")
        self._holds: dict[int, tuple[tuple[str, ...], int]] = {}  # in nano-dollars
        self._next_hold = 0

    def hold(
        self,
        spent_nanos: Mapping[str, int],
        caps: Mapping[str, float],
        may_spend_nanos: int,
        team: str | None,
        job_id: str | None,
    ) -> int:
        """Set ``may_spend_nanos`` aside in every scope of the run, or raise
        ``BudgetCapExceeded`` naming the first cap it could pass and by how much.
        ``spent_nanos`` is what the scopes paid so far, ``caps`` the caps in force in USD (this
        hierarchy's over the saved ones)."""
        scopes = (
            "org",
            *([f"team:{team}"] if team else []),
            *([f"job:{job_id}"] if job_id else []),
        )
        for scope in scopes:
            if scope not in caps:
                continue
            held = sum(
                amount for held_scopes, amount in self._holds.values() if scope in held_scopes
            )
            paid = spent_nanos.get(scope, 0)
            over = paid + held + may_spend_nanos - usd_to_nanos(caps[scope])
            if over > 0:
                raise BudgetCapExceeded(
                    f"the {_scope_name(scope)} budget of {format_usd(caps[scope])} could be "
                    f"exceeded by {_usd(over)}: {_usd(paid)} spent, {_usd(held)} held by runs "
                    f"in progress, and this run may spend up to {_usd(may_spend_nanos)}"
                )
        self._next_hold += 1
        self._holds[self._next_hold] = (scopes, may_spend_nanos)
        return self._next_hold

    def release(self, hold: int) -> None:
        """The run ended: what it spent is in its journal now."""
        self._holds.pop(hold, None)


def _usd(nanos: int) -> str:
    return format_usd(nanos_to_usd(nanos))


def _scope_name(scope: str) -> str:
    kind, _, name = scope.partition(":")
    return {"org": "organisation", "team": f"team {name}", "job": f"job {name}"}[kind]
