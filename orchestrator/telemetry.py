"""Telemetry: what an orchestrator's runs measure about each model.

Every paid call (latency, outcome, cost), every evaluation score and every validator failure of
a run goes into the model's ``ModelProfile``. Routing reads the profiles, the metrics exporters
publish them, and the state file keeps them for later runs and other processes. Answers from
the cache or the journal are not calls: they measure nothing and never pull the averages down.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from .catalog import Catalog, Model
from .models import LATENCY_SAMPLES, ModelProfile

__all__ = [
    "LATENCY_SAMPLES",
    "ModelProfile",
    "TelemetryCollector",
    "build_default_profiles",
    "merge_profiles",
]


def build_default_profiles(catalog: Catalog | None = None) -> dict[str, ModelProfile]:
    """A profile per catalog model (the built-in catalog by default), keyed by ``provider/id``,
    holding the catalog's facts and priors until calls and evaluations update it."""
    catalog = catalog if catalog is not None else Catalog.load()
    profiles = {}
    for model in catalog.models:
        provider = catalog.provider_of(model)
        profiles[model.key] = ModelProfile(
            model=model,
            region=provider.region,
            trains_on_output=provider.trains_on_output,
            quality=model.quality,
        )
    return profiles


class TelemetryCollector:
    """The model profiles of one orchestrator, by ``provider/id``, and what feeds them."""

    def __init__(self, profiles: dict[str, ModelProfile] | None = None) -> None:
        self.profiles: dict[str, ModelProfile] = profiles if profiles is not None else {}

    def ensure(self, catalog: Catalog) -> None:
        """A profile for every model of ``catalog`` (built once, then measured in place)."""
        if not self.profiles:
            self.profiles.update(build_default_profiles(catalog))

    def record_call(
        self, model: Model, seconds: float, ok: bool, cost_usd: float | None = None
    ) -> None:
        """A paid call: how long an answer took and what it cost, or that it failed."""
        profile = self.profiles.get(model.key)
        if profile is not None:
            profile.record_call(seconds, ok, cost_usd)

    def record_quality(self, model: Model, score: float) -> None:
        """An evaluation score of one of ``model``'s answers."""
        profile = self.profiles.get(model.key)
        if profile is not None:
            profile.record_quality(score)

    def record_validator_failures(self, model: Model, count: int) -> None:
        profile = self.profiles.get(model.key)
        if profile is not None:
            profile.validator_failures += count

    def measured(self) -> dict[str, ModelProfile]:
        """The profiles something was measured for, in key order."""
        return {k: p for k, p in sorted(self.profiles.items()) if p.measured}

    def export(self) -> dict[str, dict[str, Any]]:
        """What was measured, for the state file."""
        return {key: profile.to_record() for key, profile in self.measured().items()}

    def restore(self, records: Mapping[str, Mapping[str, Any]]) -> None:
        """Start from what earlier runs measured, for the models not measured here yet."""
        for key, record in records.items():
            profile = self.profiles.get(key)
            if profile is not None and not profile.measured:
                profile.restore(record)


def merge_profiles(sources: Iterable[Mapping[str, ModelProfile]]) -> dict[str, ModelProfile]:
    """Several orchestrators' profiles in one: moving averages (quality, trust, latency, cost)
    averaged over those that measured the model, counters summed, latency samples pooled (the
    latest ``LATENCY_SAMPLES`` of them kept)."""
    sources = list(sources)
    merged: dict[str, ModelProfile] = {}
    for key in sorted({key for profiles in sources for key in profiles}):
        profiles = [p[key] for p in sources if key in p]
        measured = [p for p in profiles if p.measured] or profiles
        first = profiles[0]
        merged[key] = profile = ModelProfile(
            model=first.model,
            region=first.region,
            trains_on_output=first.trains_on_output,
            quality=statistics.fmean(p.quality for p in measured),
            trust=statistics.fmean(p.trust for p in measured),
            latency_ms=_mean(p.latency_ms for p in measured),
            calls=sum(p.calls for p in profiles),
            failures=sum(p.failures for p in profiles),
            evaluations=sum(p.evaluations for p in profiles),
            validator_failures=sum(p.validator_failures for p in profiles),
            cost_avg_usd=_mean(p.cost_avg_usd for p in measured),
        )
        for source in profiles:
            profile.recent_latencies_ms.extend(source.recent_latencies_ms)
    return merged


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None
