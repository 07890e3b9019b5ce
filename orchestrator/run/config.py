"""``RunConfig``: everything a run uses besides its project, saved with the project.

A resume, whoever makes it (the command line, a script's ``Orchestrator().resume(id)``, a
worker), starts from what the project saved and applies what it is given on top, field by field,
saving the result: the next resume starts from there. ``None`` means "not given": a new run
takes the default, a resume what the project saved.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError
from orchestrator.routing.backends import BACKENDS

if TYPE_CHECKING:
    from orchestrator.routing.backends import OptimizationBackend
    from orchestrator.routing.policy import Policy

# What DEFAULTS (below) is made of, kept here so that the command line can say them in its help
# without importing the modules that use them.
DEFAULT_ROUTING = "table"
# Revision rounds of the assembled tree after the tasks (``orchestrator.code.integration``).
DEFAULT_ROUNDS = 2
# Models a call may fall back to after its routing choice (--max-fallbacks, max_fallbacks:):
# each one asked is paid for, and a job every model fails (an answer always cut off, say)
# would otherwise walk the whole catalog.
DEFAULT_MAX_FALLBACKS = 2
TREE_NAME = "project"  # the tree's directory inside the output directory, unless named


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What a run uses: its limits, how it chooses and checks, where it writes.

    ``RunConfig(max_usd=2.0, routing="greedy")``; ``over(base)`` fills what this one leaves
    unset from ``base``; ``resolved()`` fills the rest with the defaults.
    """

    # Limits: the budget in US dollars and the wall clock in seconds.
    max_usd: float | None = None
    max_time_seconds: float | None = None
    # A task completes once graded at least this (0 to 1).
    quality_threshold: float | None = None
    # Calls in flight at once, for the client the run makes.
    concurrency: int | None = None
    # How models are put in order: a name of ``orchestrator.routing.backends.BACKENDS``.
    routing: str | None = None
    # Checked at every model choice (``orchestrator.routing.policy``).
    policies: tuple[Policy, ...] | None = None
    # The budget caps the run is charged to, besides the organisation's.
    team: str | None = None
    job: str | None = None
    # Check the assembled tree together, and revise for at most this many rounds.
    integration: bool | None = None
    integration_rounds: int | None = None
    # How many tasks the planner is asked for at least; at most, as a hard cap.
    min_tasks: int | None = None
    max_tasks: int | None = None
    # The models each call may fall back to after its routing choice.
    max_fallbacks: int | None = None
    # Which models: a catalog file (None: $ORCHESTRATOR_CATALOG or the packaged one), only these
    # providers (None: every usable one), a local model (True or "embedded", or a GGUF path).
    catalog: str | None = None
    providers: tuple[str, ...] | None = None
    local: bool | str | None = None
    # Seconds: one provider call (None: each provider's own), one validator run.
    call_timeout: float | None = None
    validator_timeout: float | None = None
    # A task completes on one usable verdict when the other evaluation failed.
    allow_single_verdict: bool | None = None
    use_cache: bool | None = None
    # Where the command line (and a worker) writes the results, and the project tree's name.
    output_dir: str | None = None
    tree_name: str | None = None

    def __post_init__(self) -> None:
        _check(self)

    def over(self, base: RunConfig) -> RunConfig:
        """This config, with what it leaves unset taken from ``base``."""
        given = {f.name: getattr(self, f.name) for f in fields(self)}
        return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})

    def resolved(self) -> RunConfig:
        """Every field set: what this one leaves unset, from the defaults."""
        return self.over(DEFAULTS)

    def backend(self) -> OptimizationBackend:
        """A new backend of this config's routing (the default's where unset)."""
        return BACKENDS[self.routing or DEFAULT_ROUTING]()

    def given(self) -> dict[str, Any]:
        """The fields set, by name."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    def to_settings(self) -> dict[str, Any]:
        """The fields set, as saved with a project (JSON)."""
        saved = self.given()
        if self.policies is not None:
            saved["policies"] = [p.to_dict() for p in self.policies]
        if self.providers is not None:
            saved["providers"] = list(self.providers)
        return saved

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> RunConfig:
        """What a project saved (other keys are ignored); a value of the wrong kind is a
        ``ConfigError`` naming it."""
        from orchestrator.routing.policy import Policy

        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in settings.items() if k in names and v is not None}
        try:
            if "policies" in values:
                values["policies"] = tuple(Policy(**entry) for entry in values["policies"])
            if "providers" in values:
                values["providers"] = tuple(str(p) for p in values["providers"])
            return cls(**values)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"saved run settings cannot be read: {exc}") from None


_NUMBERS: dict[str, tuple[type, float, str]] = {
    # name: (kind, least allowed, how it is said)
    "max_usd": (float, 0.0, "0 or more"),
    "max_time_seconds": (float, 0.0, "greater than 0"),
    "concurrency": (int, 1, "at least 1"),
    "integration_rounds": (int, 0, "0 or more"),
    "min_tasks": (int, 1, "at least 1"),
    "max_tasks": (int, 1, "at least 1"),
    "max_fallbacks": (int, 0, "0 or more"),
    "call_timeout": (float, 0.0, "greater than 0"),
    "validator_timeout": (float, 0.0, "greater than 0"),
}
_STRICTLY_ABOVE = {"max_time_seconds", "call_timeout", "validator_timeout"}


def _check(config: RunConfig) -> None:
    """One clear ``ConfigError`` for a value a run cannot use."""
    for name, (kind, least, said) in _NUMBERS.items():
        value = getattr(config, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, not {value!r}")
        if kind is int and value != int(value):
            raise ConfigError(f"{name} must be a whole number, not {value!r}")
        low = value <= least if name in _STRICTLY_ABOVE else value < least
        if not math.isfinite(value) or low:
            raise ConfigError(f"{name} must be {said}, not {value!r}")
    threshold = config.quality_threshold
    if threshold is not None and not (
        isinstance(threshold, int | float) and 0.0 <= threshold <= 1.0
    ):
        raise ConfigError("quality threshold must be between 0 and 1")
    if config.routing is not None and config.routing not in BACKENDS:
        known = ", ".join(sorted(BACKENDS))
        raise ConfigError(f"unknown routing {config.routing!r}; known: {known}")
    for name in ("integration", "allow_single_verdict", "use_cache"):
        value = getattr(config, name)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, not {value!r}")
    for name in ("team", "job", "catalog", "output_dir", "tree_name"):
        value = getattr(config, name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be text, not {value!r}")
    if config.local is not None and not isinstance(config.local, bool | str):
        raise ConfigError(f"local must be true, false or a model file, not {config.local!r}")
    if config.policies:  # the defaults' empty tuple has none to check: no import for it
        from orchestrator.routing.policy import Policy

        if not all(isinstance(p, Policy) for p in config.policies):
            raise ConfigError("policies must be Policy objects")


# What a new run uses where nothing was given.
DEFAULTS = RunConfig(
    max_usd=8.0,
    max_time_seconds=5400.0,
    quality_threshold=0.85,
    concurrency=3,
    routing=DEFAULT_ROUTING,
    policies=(),
    integration=True,
    integration_rounds=DEFAULT_ROUNDS,
    min_tasks=5,
    max_fallbacks=DEFAULT_MAX_FALLBACKS,
    local=False,
    validator_timeout=60.0,
    allow_single_verdict=False,
    use_cache=True,
    tree_name=TREE_NAME,
)
