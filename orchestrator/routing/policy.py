"""Policies: which models a run may use, checked at every model choice, with their reasons.

A ``Policy`` constrains providers, models, regions, training on output, the cost of a call and
latency. Its ``enforcement_mode`` says what a violation does: ``HARD`` blocks the model;
``SOFT`` blocks compliance violations (provider, model, region, training) but lets cost and
latency violations through, recorded; ``MONITOR`` blocks nothing and records everything.
``PolicyHierarchy`` holds an organisation's, its teams' and its jobs' policies;
``policies_for(team=..., job_id=...)`` gives the ``PolicySet`` that applies to one run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from orchestrator.llm.catalog import Model
from orchestrator.routing.profiles import ModelProfile


class EnforcementMode(StrEnum):
    HARD = "hard"  # any violation blocks
    SOFT = "soft"  # compliance violations block; cost and latency ones are recorded
    MONITOR = "monitor"  # nothing blocks; every violation is recorded


# Rules about where data may go: they block under HARD and SOFT.
COMPLIANCE_RULES = frozenset(
    {"allowed_providers", "blocked_providers", "allowed_models", "blocked_models",
     "allowed_regions", "allow_training_on_output"}
)  # fmt: skip


@dataclass(frozen=True)
class Policy:
    """One named set of constraints. Lists of providers, models (id, ``provider/id`` or alias)
    and regions compare case-insensitively; ``None`` for an ``allowed_*`` list means "any"."""

    name: str
    allowed_providers: Sequence[str] | None = None
    blocked_providers: Sequence[str] = ()
    allowed_models: Sequence[str] | None = None
    blocked_models: Sequence[str] = ()
    allowed_regions: Sequence[str] | None = None
    allow_training_on_output: bool = True
    max_cost_per_task_usd: float | None = None
    max_latency_ms: float | None = None
    enforcement_mode: EnforcementMode = EnforcementMode.HARD

    def __post_init__(self) -> None:
        # Lists given in code or a file become tuples of lower-case names: hashable, comparable.
        for name in ("allowed_providers", "allowed_models", "allowed_regions"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _names(value))
        for name in ("blocked_providers", "blocked_models"):
            object.__setattr__(self, name, _names(getattr(self, name)))
        object.__setattr__(self, "enforcement_mode", EnforcementMode(self.enforcement_mode))

    def check(self, profile: ModelProfile, cost_usd: float) -> list[Violation]:
        """How choosing ``profile``'s model for a call estimated at ``cost_usd`` breaks this
        policy (nothing: it complies)."""
        model = profile.model
        found: list[tuple[str, str]] = []
        provider = model.provider.lower()
        if self.allowed_providers is not None and provider not in self.allowed_providers:
            found.append(("allowed_providers", f"provider {provider} is not allowed"))
        if provider in self.blocked_providers:
            found.append(("blocked_providers", f"provider {provider} is blocked"))
        names = model_names(model)
        if self.allowed_models is not None and not names & set(self.allowed_models):
            found.append(("allowed_models", f"model {model.value} is not allowed"))
        if names & set(self.blocked_models):
            found.append(("blocked_models", f"model {model.value} is blocked"))
        if self.allowed_regions is not None and profile.region not in self.allowed_regions:
            found.append(("allowed_regions", f"region {profile.region} is not allowed"))
        if not self.allow_training_on_output and profile.trains_on_output is not False:
            terms = "may train" if profile.trains_on_output else "does not say whether it trains"
            found.append(("allow_training_on_output", f"{provider} {terms} on API output"))
        cap = self.max_cost_per_task_usd
        if cap is not None and cost_usd > cap:
            found.append(("max_cost_per_task_usd", f"a call costs about ${cost_usd:.4f} > ${cap}"))
        sla, latency = self.max_latency_ms, profile.latency_ms
        if sla is not None and latency is not None and latency > sla:
            found.append(("max_latency_ms", f"latency {latency:.0f} ms > {sla:.0f} ms"))
        return [Violation(self.name, rule, text, self._blocks(rule)) for rule, text in found]

    def _blocks(self, rule: str) -> bool:
        if self.enforcement_mode is EnforcementMode.HARD:
            return True
        return self.enforcement_mode is EnforcementMode.SOFT and rule in COMPLIANCE_RULES

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                data[f.name] = list(value) if isinstance(value, tuple) else value
        data["name"] = self.name
        return data


@dataclass(frozen=True)
class Violation:
    policy: str
    rule: str
    message: str
    blocking: bool

    def __str__(self) -> str:
        return f"{self.policy}: {self.message}"


@dataclass(frozen=True)
class PolicySet:
    """The policies that apply to one run, all checked at every model choice."""

    policies: tuple[Policy, ...] = ()

    def __init__(self, policies: Iterable[Policy] = ()) -> None:
        object.__setattr__(self, "policies", tuple(policies))

    def __iter__(self) -> Iterator[Policy]:
        return iter(self.policies)

    def __len__(self) -> int:
        return len(self.policies)

    def check(self, profile: ModelProfile, cost_usd: float) -> list[Violation]:
        return [v for policy in self.policies for v in policy.check(profile, cost_usd)]


@dataclass
class PolicyHierarchy:
    """An organisation's policies, its teams' and its jobs': a run is bound by the org's, its
    team's and its job's together."""

    org: list[Policy] = field(default_factory=list)
    team: Mapping[str, list[Policy]] = field(default_factory=dict)
    job: Mapping[str, list[Policy]] = field(default_factory=dict)

    def policies_for(self, team: str | None = None, job_id: str | None = None) -> PolicySet:
        policies = list(self.org)
        if team is not None:
            policies += self.team.get(team, [])
        if job_id is not None:
            policies += self.job.get(job_id, [])
        return PolicySet(policies)


class PolicyEngine:
    """Consulted for every model choice: which candidates the policies leave, and what each
    of them (and each model they exclude) violates."""

    def __init__(self, policies: Iterable[Policy] = ()) -> None:
        self.policies = PolicySet(policies)

    def check(self, profile: ModelProfile, cost_usd: float) -> list[Violation]:
        return self.policies.check(profile, cost_usd)

    @staticmethod
    def blocked(violations: Sequence[Violation]) -> bool:
        return any(v.blocking for v in violations)


def model_names(model: Model) -> set[str]:
    """Every name a policy may use for ``model``: id, ``provider/id`` and its aliases."""
    return {n.lower() for n in (model.id, model.key, model.alias, *model.aliases)}


def _names(values: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    return tuple(str(v).strip().lower() for v in values)
