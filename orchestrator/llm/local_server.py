"""The embedded llama.cpp server's own process: ``python -m orchestrator.llm.local_server ARGS``.

Run by ``orchestrator.llm.local.LocalModel``, never by hand. It serves the GGUF file on
127.0.0.1 at a free port, prints one JSON line (``{"address": ...}`` or ``{"error": ...}``),
and serves until its standard input closes: when the parent stops it, and when the parent
dies, however it dies. It then leaves at once without destroying the server object, whose
destructor can wait forever on a thread of its own; a process can always be ended.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading


def _leave_when_parent_goes() -> None:
    """Read standard input until the parent closes it or dies, then leave at once: from the
    start, so a parent killed while the model loads (seconds) leaves no server behind."""
    sys.stdin.buffer.read()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="orchestrator.llm.local_server")
    parser.add_argument("model")
    parser.add_argument("--alias", required=True)
    parser.add_argument("--context", type=int, required=True)
    parser.add_argument("--slots", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    threading.Thread(target=_leave_when_parent_goes, daemon=True).start()
    try:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = args.model
        params.model_alias = {args.alias}
        params.n_ctx = args.context
        params.n_parallel = args.slots
        params.kv_unified = True  # the slots share the context instead of splitting it
        params.port = 0  # a free port, chosen by the system
        params.verbosity = -1
        # Idle threads sleep instead of spinning for work: a spinning server takes CPU from every
        # other process (another server, the run itself), which on a few cores slows all of them.
        params.cpuparams.poll = 0
        params.cpuparams_batch.poll = 0
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
        server = xllamacpp.Server(params)
        message = {"address": server.listening_address}
    except Exception as exc:  # the library raises plain exceptions for a bad file
        message = {"error": str(exc) or type(exc).__name__}
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
    if "address" in message:
        threading.Event().wait()  # serves until the parent goes (see above)
    os._exit(0)


if __name__ == "__main__":
    main()
