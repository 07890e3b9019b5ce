"""What a run is watched with: its progress on the terminal, a metrics exporter and an audit
log (``--metrics-out``, ``--audit-log``), the files checked before anything is paid for."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from orchestrator.cli.options import usage_error
from orchestrator.money.budget import Budget
from orchestrator.observe.audit import AuditLog
from orchestrator.observe.metrics import MetricsExporter, exporter_for
from orchestrator.observe.progress import ProgressPrinter
from orchestrator.run.orchestrator import Orchestrator


@dataclass
class Watch:
    """What the run is watched with: a metrics exporter and an audit log, both checked before
    anything is paid."""

    metrics: MetricsExporter | None = None
    audit: AuditLog | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Watch:
        metrics = None
        if args.metrics_out:
            metrics = exporter_for(args.metrics_out)
            if args.metrics_out != "-":
                _probe_file(args.metrics_out, "--metrics-out")
        audit = None
        if args.audit_log:
            _probe_file(args.audit_log, "--audit-log")
            audit = AuditLog(args.audit_log)
        return cls(metrics, audit)

    def attach(self, orchestrator: Orchestrator, printer: ProgressPrinter) -> None:
        orchestrator.display(printer)
        orchestrator.set_metrics_exporter(self.metrics)
        orchestrator.audit_log = self.audit

    async def finish(self, orchestrator: Orchestrator) -> None:
        if self.metrics is not None and not self.metrics.follows_run:
            orchestrator.export_metrics()  # the console table, after the results

    def close(self) -> None:
        """Write out the audit log and print its head hash, for the user to keep elsewhere
        (``--verify-audit FILE --audit-head HASH`` then catches records cut from its end)."""
        audit, self.audit = self.audit, None
        if audit is None:
            return
        audit.close()
        if audit.records:
            print(
                f"audit log {audit.path}: {len(audit.records)} records added; head {audit.head}",
                file=sys.stderr,
            )


def _probe_file(name: str, flag: str) -> None:
    """A file the run will write: its directory must exist and be writable."""
    directory = Path(name).resolve().parent
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise usage_error(f"{flag} {name}: directory {directory} does not exist or is not writable")
    if Path(name).is_dir():
        raise usage_error(f"{flag} {name} is a directory")


def progress_printer(args: argparse.Namespace, budget: Budget | None = None) -> ProgressPrinter:
    # With -v, log lines go to the same terminal: a live area redrawn in place would tear them.
    return ProgressPrinter(budget, live=False if args.verbose else None)
