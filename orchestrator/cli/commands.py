"""What the command line does, for the flags ``orchestrator.cli.app`` read: which mode they ask
for (a new run, a resume, a submission or a worker, a forecast, the saved projects, the catalog,
an audit log's check), and how it ends, as an exit code.

The flags are checked in ``options``; the runs are ``runs``, watched as ``watch`` sets up; what
is only reported, without running a project, is ``reports``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from orchestrator.cli.app import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_SUCCESS, discard_stdout
from orchestrator.cli.options import (
    check_limits,
    probe_output_dir,
    project_spec,
    usage_error,
    use_database,
)
from orchestrator.cli.reports import (
    forecast_text,
    format_catalog,
    list_projects,
    listed_catalog,
    verify_audit,
)
from orchestrator.cli.runs import resume, run_new, submit, work
from orchestrator.cli.watch import Watch
from orchestrator.errors import OrchestratorError
from orchestrator.run.projects import new_project_id
from orchestrator.settings import load_environment
from orchestrator.text.visible import visible


def execute(args: argparse.Namespace) -> int:
    """What the flags ``args`` ask for (``orchestrator.cli.app`` reads them); the exit code."""
    project_id: str | None = None
    watch: Watch | None = None
    try:
        if args.db:
            use_database(args.db)
        if args.list_models:
            env = load_environment()
            catalog, local = listed_catalog(args, env)
            sys.stdout.write(format_catalog(catalog, env, local))
            return EXIT_SUCCESS
        if args.list_projects:
            return asyncio.run(list_projects())
        if args.serve:
            from orchestrator.web.serve import serve  # the web extra: only when asked for

            return serve(args.serve, audit_log=args.audit_log)
        if args.audit_head and not args.verify_audit:
            raise usage_error("--audit-head goes with --verify-audit FILE")
        if args.verify_audit:
            return verify_audit(args.verify_audit, args.audit_head)
        check_limits(args)
        if args.exit_when_idle and not args.worker:
            raise usage_error("--exit-when-idle goes with --worker")
        if args.worker:
            return asyncio.run(work(args))
        if args.resume:
            project_id = args.resume
            probe_output_dir(args.output_dir, args.overwrite)
            watch = Watch.from_args(args)
            return asyncio.run(resume(args, watch))
        spec = project_spec(args)
        if args.forecast:
            sys.stdout.write(forecast_text(spec, args))
            return EXIT_SUCCESS
        probe_output_dir(spec.output_dir, args.overwrite, spec.description, spec.criteria)
        if args.submit:
            return asyncio.run(submit(spec, args))
        watch = Watch.from_args(args)
        spec.project_id = project_id = spec.project_id or new_project_id()
        return asyncio.run(run_new(spec, args, watch))
    except OrchestratorError as exc:
        print(f"orchestrator: error: {visible(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        discard_stdout()
        return EXIT_SUCCESS
    except (KeyboardInterrupt, asyncio.CancelledError):
        # The run is saved; a second Ctrl-C now must not turn a clean exit into a crash.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        hint = f"; resume with: python -m orchestrator --resume {project_id}" if project_id else ""
        print(f"orchestrator: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if watch is not None:
            watch.close()  # however the run ended, the audit log's head is worth keeping
