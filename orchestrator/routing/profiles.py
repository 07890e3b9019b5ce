"""Model profiles: what model selection knows about each model.

A profile holds the catalog's facts about a model (provider, region, training terms, prices) and
what calls and evaluations measured (quality, trust, latency, cost). Routing reads profiles; the
telemetry feeds them; the state keeps them for later runs; several orchestrators' profiles merge.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.llm.catalog import Catalog, Model

# Answers in a row failing a deterministic check that send a model to the back for a task type,
# until this many answers of the type (every model's) have been judged since its last: then it
# is on trial again (one more failed check sends it back), since a model locked out for good by
# two unlucky answers would leave its share of the work to dearer ones.
DEMOTE_AFTER = 2
DEMOTED_FOR = 20
# Under a router that learns, a model with passes on record is held back only once its failing
# streak is one its record makes less likely than this: a model that passes 60% fails two in a
# row one time in six, and its posterior has counted those failures already. A streak that rare
# says the model changed (a new version, a broken deployment), which its record cannot say yet.
UNLIKELY_STREAK = 0.01
# Weight of the newest sample in the moving averages of a profile.
PROFILE_EMA_ALPHA = 0.2
LATENCY_SAMPLES = 50  # the rolling buffer a profile's p95 latency is read from


@dataclass
class ModelProfile:
    """What model selection knows about one model: the catalog's facts (provider, region,
    training terms, prices, context) and what calls and evaluations measured.

    ``quality`` starts at the catalog's prior and follows the model's evaluation scores;
    ``trust`` is a moving average of its calls' outcomes (1 answered, 0 failed); ``latency_ms``
    is ``None`` until a call was measured.
    """

    model: Model
    region: str
    trains_on_output: bool | None
    quality: float
    trust: float = 1.0
    latency_ms: float | None = None
    calls: int = 0
    failures: int = 0
    evaluations: int = 0
    validator_failures: int = 0
    # A moving average of what an answered call cost (cache hits and replays are not calls).
    cost_avg_usd: float | None = None
    # The latest call latencies, for a real 95th percentile rather than a guess from the mean.
    recent_latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    # How its answers were judged, by task type (``TaskType`` value): what adaptive routing learns.
    outcomes: dict[str, Outcomes] = field(default_factory=dict)

    @property
    def provider(self) -> str:
        return self.model.provider

    @property
    def measured(self) -> bool:
        """Whether any call, evaluation or validator run has told us something about it."""
        return bool(self.calls or self.evaluations or self.validator_failures or self.outcomes)

    def judged(self, task_type: str, passed: bool, *, by_checks: bool, of_type: int = 0) -> None:
        """One of its answers to a task of ``task_type`` passed or failed (``by_checks``: failed
        a deterministic check, which counts toward a demotion); ``of_type``: the answers of
        that task type judged so far, every model's and this one, a demotion's clock."""
        found = self.outcomes.setdefault(task_type, Outcomes())
        found.add(passed, by_checks=by_checks, of_type=of_type)

    @property
    def success_rate(self) -> float:
        return 1.0 if not self.calls else (self.calls - self.failures) / self.calls

    @property
    def latency_p95_ms(self) -> float | None:
        """The 95th percentile of the last ``LATENCY_SAMPLES`` call latencies (nearest rank)."""
        if not self.recent_latencies_ms:
            return None
        ordered = sorted(self.recent_latencies_ms)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    def cost_per_call(self, input_tokens: int, output_tokens: int) -> float:
        return self.model.price.cost(input_tokens, output_tokens)

    def record_call(self, seconds: float, ok: bool, cost_usd: float | None = None) -> None:
        """A paid call's outcome (answers from the cache or the journal say nothing new); the
        cost of an answered one."""
        self.calls += 1
        self.failures += not ok
        self.trust = _ema(self.trust, 1.0 if ok else 0.0)
        if ok:
            millis = seconds * 1000
            self.latency_ms = millis if self.latency_ms is None else _ema(self.latency_ms, millis)
            self.recent_latencies_ms.append(millis)
            if cost_usd is not None:
                average = self.cost_avg_usd
                self.cost_avg_usd = cost_usd if average is None else _ema(average, cost_usd)

    def to_record(self) -> dict[str, Any]:
        """What was measured, for the state file (the catalog facts are not saved)."""
        return {
            "quality": self.quality, "trust": self.trust, "latency_ms": self.latency_ms,
            "calls": self.calls, "failures": self.failures, "evaluations": self.evaluations,
            "validator_failures": self.validator_failures, "cost_avg_usd": self.cost_avg_usd,
            "recent_latencies_ms": list(self.recent_latencies_ms),
            "outcomes": {kind: o.to_record() for kind, o in sorted(self.outcomes.items())},
        }  # fmt: skip

    def restore(self, record: Mapping[str, Any]) -> None:
        """Take what an earlier run measured (saved by ``to_record``)."""
        for name in ("quality", "trust", "latency_ms", "cost_avg_usd"):
            if name in record:
                setattr(self, name, record[name])
        for name in ("calls", "failures", "evaluations", "validator_failures"):
            setattr(self, name, int(record.get(name, 0)))
        self.recent_latencies_ms.extend(float(x) for x in record.get("recent_latencies_ms", []))
        outcomes = record.get("outcomes") or {}
        if isinstance(outcomes, Mapping):
            self.outcomes = {
                str(kind): Outcomes.from_record(found) for kind, found in outcomes.items()
            }

    def record_quality(self, score: float) -> None:
        """An evaluation score of one of the model's answers."""
        self.evaluations += 1
        self.quality = _ema(self.quality, score)


@dataclass
class Outcomes:
    """How a model's answers to one task type were judged: passed (checks and evaluation),
    failed, and how many of the latest failed a deterministic check in a row."""

    passed: int = 0
    failed: int = 0
    failing_checks: int = 0  # back to 0 at the next pass
    # The answers of the task type judged (every model's) when its last failed check was.
    failed_checks_at: int = 0

    @property
    def judged(self) -> int:
        return self.passed + self.failed

    def add(self, passed: bool, *, by_checks: bool, of_type: int = 0) -> None:
        if passed:
            self.passed += 1
            self.failing_checks = 0
        else:
            self.failed += 1
            if by_checks:
                self.failing_checks += 1
                self.failed_checks_at = of_type

    def demoted(self, of_type: int, rate_before: float | None = None) -> bool:
        """Whether its last ``DEMOTE_AFTER`` answers failed their checks, the last of them
        fewer than ``DEMOTED_FOR`` answers of the type ago (``of_type``: judged so far); given
        ``rate_before``, its pass rate as learned before the streak, only a streak that rate makes
        less likely than ``UNLIKELY_STREAK`` counts (``streak_held_back``)."""
        recent = of_type - self.failed_checks_at < DEMOTED_FOR
        return self.failing_checks >= streak_held_back(rate_before) and recent

    def to_record(self) -> list[int]:
        return [self.passed, self.failed, self.failing_checks, self.failed_checks_at]

    @classmethod
    def from_record(cls, record: Any) -> Outcomes:
        """A saved record (a list of three or four counts); anything else counts as nothing."""
        try:
            counts = [max(0, int(n)) for n in record]
        except (TypeError, ValueError):
            return cls()
        return cls(*counts) if len(counts) in (3, 4) else cls()

    def merged(self, other: Outcomes) -> Outcomes:
        return Outcomes(
            self.passed + other.passed,
            self.failed + other.failed,
            max(self.failing_checks, other.failing_checks),
            max(self.failed_checks_at, other.failed_checks_at),
        )


def streak_held_back(rate_before: float | None = None) -> int:
    """The answers failing their checks in a row that hold a model back: ``DEMOTE_AFTER``, or,
    for a model learned to pass at ``rate_before``, the shortest streak that rate makes less
    likely than ``UNLIKELY_STREAK`` (never fewer than ``DEMOTE_AFTER``)."""
    if rate_before is None or not 0 < rate_before < 1:
        return DEMOTE_AFTER
    unlikely = math.ceil(math.log(UNLIKELY_STREAK) / math.log(1 - rate_before) - 1e-9)
    return max(DEMOTE_AFTER, unlikely)


def judged_of_type(profiles: Iterable[ModelProfile], task_type: str) -> int:
    """Answers to tasks of ``task_type`` judged so far, every model's: a demotion's clock."""
    return sum(p.outcomes[task_type].judged for p in profiles if task_type in p.outcomes)


def demoted(
    profiles: Mapping[str, ModelProfile],
    task_type: str,
    rate_before: Callable[[ModelProfile, str], float | None] | None = None,
) -> dict[str, int]:
    """The models whose answers to ``task_type`` keep failing their checks, by key, with how
    many in a row (``Outcomes.demoted``): held back, so the work goes to others. A router that
    learns gives ``rate_before``, a model's pass rate at the type as learned before its failing
    streak (None: nothing passed to learn from)."""
    of_type = judged_of_type(profiles.values(), task_type)
    held: dict[str, int] = {}
    for key, profile in profiles.items():
        found = profile.outcomes.get(task_type)
        if found is None or not found.failing_checks:
            continue
        rate = rate_before(profile, task_type) if rate_before is not None else None
        if found.demoted(of_type, rate):
            held[key] = found.failing_checks
    return held


# What a profile's record counts, and which of its counts moves each of its moving averages.
_COUNTERS = ("calls", "failures", "evaluations", "validator_failures")


def merged_record(
    stored: Mapping[str, Any] | None,
    now: Mapping[str, Any],
    since: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What the store should hold for a model once this process saves: ``stored`` (what every
    process saved until now) with what this process measured since ``since`` (its record when
    it last loaded or saved it; None: nothing of it came from the store), ``now`` being its
    record now. Counters add this process's increments; each moving average takes this
    process's samples on top of the stored one (as if they had come after it); this process's
    new latencies join the stored ones; a task type's passes and failures add up, its failing
    streak is the longer one (as ``merge_profiles`` has it). Several processes saving the same
    model this way lose none of each other's measurements."""
    if stored is None or not stored:
        return dict(now)
    base = since or {}
    merged = {**now, **stored}
    delta = {name: max(0, int(now.get(name, 0)) - int(base.get(name, 0))) for name in _COUNTERS}
    for name in _COUNTERS:
        merged[name] = int(stored.get(name, 0)) + delta[name]
    answered = max(0, delta["calls"] - delta["failures"])
    moved_by = {"quality": delta["evaluations"], "trust": delta["calls"],
                "latency_ms": answered, "cost_avg_usd": answered}  # fmt: skip
    for name, samples in moved_by.items():
        merged[name] = _moved(stored.get(name), base.get(name), now.get(name), samples)
    latest = list(now.get("recent_latencies_ms") or [])
    new = latest[len(latest) - min(answered, len(latest)) :]
    merged["recent_latencies_ms"] = [*list(stored.get("recent_latencies_ms") or []), *new][
        -LATENCY_SAMPLES:
    ]
    merged["outcomes"] = _merged_outcomes(
        stored.get("outcomes"), now.get("outcomes"), base.get("outcomes")
    )
    return merged


def _moved(stored: Any, since: Any, now: Any, samples: int) -> Any:
    """A moving average as stored, moved by the ``samples`` this process took since ``since``
    (which moved its own from ``since`` to ``now``): an average after n samples is the start's
    share (1 - alpha)^n plus the samples', so the stored one takes the samples' part as is."""
    if samples <= 0 or now is None:
        return stored if stored is not None else now
    if stored is None:
        return now
    start = since if since is not None else now
    kept = (1 - PROFILE_EMA_ALPHA) ** samples
    return float(now) + kept * (float(stored) - float(start))


def _merged_outcomes(stored: Any, now: Any, since: Any) -> dict[str, list[int]]:
    """The outcomes by task type (``Outcomes.to_record`` lists): the stored ones with this
    process's passes and failures since ``since`` added."""

    def read(found: Any) -> dict[str, Outcomes]:
        if not isinstance(found, Mapping):
            return {}
        return {str(kind): Outcomes.from_record(record) for kind, record in found.items()}

    stored_by, now_by, since_by = read(stored), read(now), read(since)
    merged = dict(stored_by)
    for kind, mine in now_by.items():
        before = since_by.get(kind, Outcomes())
        added = Outcomes(
            max(0, mine.passed - before.passed),
            max(0, mine.failed - before.failed),
            mine.failing_checks,
            mine.failed_checks_at,
        )
        if added.judged:
            merged[kind] = merged.get(kind, Outcomes()).merged(added)
    return {kind: found.to_record() for kind, found in sorted(merged.items())}


def _ema(average: float, sample: float) -> float:
    return (1 - PROFILE_EMA_ALPHA) * average + PROFILE_EMA_ALPHA * sample


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
            for kind, found in source.outcomes.items():
                profile.outcomes[kind] = profile.outcomes.get(kind, Outcomes()).merged(found)
    return merged


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None
