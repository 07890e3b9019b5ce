"""Telemetry: what an orchestrator's runs measure about each model.

Every paid call (latency, outcome, cost), every evaluation score and every validator failure of
a run goes into the model's ``ModelProfile``. Routing reads the profiles, the metrics exporters
publish them, and the state file keeps them for later runs and other processes. Answers from
the cache or the journal are not calls: they measure nothing and never pull the averages down.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.llm.catalog import Catalog, Model
from orchestrator.routing.profiles import (
    ModelProfile,
    build_default_profiles,
    judged_of_type,
    merged_record,
)

if TYPE_CHECKING:
    from orchestrator.store.measures import Measures


class TelemetryCollector:
    """The model profiles of one orchestrator, by ``provider/id``, and what feeds them."""

    def __init__(self, profiles: dict[str, ModelProfile] | None = None) -> None:
        self.profiles: dict[str, ModelProfile] = profiles if profiles is not None else {}
        # Each profile's record as it was last loaded from the store or saved to it: what it
        # measured since is what a save adds to the store's.
        self._synced: dict[str, dict[str, Any]] = {}

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

    def record_judged(self, model: Model, task_type: str, passed: bool, *, by_checks: bool) -> None:
        """One of ``model``'s answers to a task of ``task_type`` judged: passed (its checks and
        its evaluation), or failed (``by_checks``: a deterministic check)."""
        profile = self.profiles.get(model.key)
        if profile is not None:
            of_type = self.judged(task_type) + 1  # this answer too
            profile.judged(task_type, passed, by_checks=by_checks, of_type=of_type)

    def judged(self, task_type: str) -> int:
        """Answers to tasks of ``task_type`` judged so far, every model's."""
        return judged_of_type(self.profiles.values(), task_type)

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
                self._synced[key] = profile.to_record()

    async def save(self, measures: Measures) -> None:
        """Add what was measured since the last load or save to what the store holds, model by
        model in one transaction (``merged_record``): other processes saving the same models on
        the same store keep theirs, and ours is not counted twice. Safe to run while another
        save of this collector is under way: each adds what the other does not."""
        pending = {}
        for key, profile in self.measured().items():
            now, since = profile.to_record(), self._synced.get(key)
            if now != since:
                pending[key] = (now, since)
                self._synced[key] = now  # the next save adds only what comes after
        if not pending:
            return
        try:
            await measures.save_model_telemetry(
                {
                    key: functools.partial(_update, now=now, since=since)
                    for key, (now, since) in pending.items()
                }
            )
        except BaseException:
            for key, (now, since) in pending.items():
                if self._synced.get(key) is now:  # no later save counted on it: try again
                    if since is None:
                        self._synced.pop(key, None)
                    else:
                        self._synced[key] = since
            raise


def _update(
    stored: dict[str, Any] | None, *, now: dict[str, Any], since: dict[str, Any] | None
) -> dict[str, Any]:
    return merged_record(stored, now, since)
