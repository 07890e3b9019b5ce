"""``Observed``: what sees an ``Orchestrator``'s runs (the half of it its runs report to): the
hooks, the event handler and the display, what its runs measured about each model, the metrics
exporter and the audit log."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from orchestrator.observe.events import Event, EventPump, EventSink, guarded, ignore
from orchestrator.observe.hooks import EventType, Hook, HookRegistry
from orchestrator.observe.metrics import MetricsExporter, MetricsSnapshot
from orchestrator.observe.metrics import collect as collect_metrics
from orchestrator.observe.telemetry import TelemetryCollector

if TYPE_CHECKING:
    from orchestrator.observe.audit import AuditLog
    from orchestrator.routing.profiles import ModelProfile
    from orchestrator.routing.router import Decision
    from orchestrator.run.session import Session
    from orchestrator.run.tasks import ProjectState

log = logging.getLogger(__name__)


class Observed:
    """The events of the runs go to ``emit``: to the display, the ``on_event`` handler and the
    hooks. ``telemetry`` is what the runs measured about each model (quality, trust, latency,
    cost), by ``provider/id``, built from the client's catalog at the first run; every model
    selection and every call is recorded in ``audit_log``, hash-chained, when there is one."""

    def __init__(self, on_event: EventSink | None, audit_log: AuditLog | None) -> None:
        self.hooks = HookRegistry()
        # Time-boxed like the hooks (``hooks.timeout``).
        self._on_event = (
            EventPump(on_event, lambda: self.hooks.timeout) if on_event is not None else None
        )
        self._display: EventSink = ignore
        self.emit: EventSink = self._emit
        self.telemetry = TelemetryCollector()
        self.metrics_exporter: MetricsExporter | None = None
        self._current_run: ProjectState | None = None  # the run the metrics report on
        self.audit_log = audit_log

    @property
    def profiles(self) -> dict[str, ModelProfile]:
        """What this orchestrator's runs measured about each model (``self.telemetry``)."""
        return self.telemetry.profiles

    def add_hook(self, event_type: EventType, callback: Hook) -> None:
        """Call ``callback`` with keyword arguments on every ``event_type`` of this
        orchestrator's runs (``orchestrator.hooks``): sync or async, time-boxed, and never able
        to break or stall a run."""
        self.hooks.add(event_type, callback)

    def display(self, sink: EventSink) -> None:
        """Also send every event to ``sink``, called in order on the event loop's thread as
        each happens: for a progress display that must not race the program's other output.
        It must return at once (``on_event`` handlers run off the loop, time-boxed); one that
        raises is logged once."""
        self._display = guarded(sink)

    def _emit(self, event: Event) -> None:
        self._display(event)
        if self._on_event is not None:
            self._on_event(event)
        self.hooks.dispatch(event)

    async def _events_seen(self) -> None:
        """Once the ``on_event`` handler has seen the events so far (or hung)."""
        if self._on_event is not None:
            await asyncio.shield(self._on_event.drain())

    def set_metrics_exporter(self, exporter: MetricsExporter | None) -> None:
        """Where ``export_metrics`` writes (``orchestrator.metrics``); a file exporter is also
        written after every finished task and at the end of each run."""
        self.metrics_exporter = exporter

    def export_metrics(self) -> MetricsSnapshot:
        """Export the model telemetry and the latest run's figures with the exporter set (if
        any), and return them."""
        snapshot = self._metrics_snapshot()
        if self.metrics_exporter is not None:
            self.metrics_exporter.export(snapshot)
        return snapshot

    def _metrics_snapshot(self) -> MetricsSnapshot:
        return collect_metrics(self.telemetry.profiles, self._current_run)

    async def _load_telemetry(self, session: Session) -> None:
        """What earlier runs measured about each model, for those this orchestrator has not
        measured itself: routing and the metrics start from it."""
        if session.store is None:
            return
        self.telemetry.ensure(session.client.catalog)
        self.telemetry.restore(await session.store.measures.model_telemetry())

    def _decided(self, project_id: str | None, decision: Decision) -> None:
        """A model chosen for ``project_id``: logged, audited and sent as an event."""
        if log.isEnabledFor(logging.DEBUG):  # the line is made only for -v: a choice per call
            log.debug("%s", decision.explain())
        if self.audit_log is not None:
            self.audit_log.record(
                "decision", decision.to_record(), project_id=project_id, task_id=decision.task_id
            )
        chosen = decision.chosen.value if decision.chosen else None
        self.emit(
            Event(
                "model_selected",
                decision.task_id,
                chosen,
                decision.role,
                {"decision": decision, "backend": decision.backend},
            )
        )
