"""``--serve [HOST:]PORT``: the pages (``app``) served by uvicorn until Ctrl-C or SIGTERM, on
127.0.0.1 unless a host is given."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError
from orchestrator.store.state import StateManager

if TYPE_CHECKING:
    import uvicorn

DEFAULT_HOST = "127.0.0.1"
# A page bound to this machine's loopback answers only to its loopback names: a site the browser
# visits cannot point a name of its own at 127.0.0.1 and read the page through it. (A Host header
# writes an IPv6 address in brackets.)
_LOOPBACK_NAMES = ["127.0.0.1", "localhost", "[::1]"]


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPV6]:PORT`` as (host, port); ``ConfigError`` otherwise."""
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "[" in host or "]" in host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--serve takes [HOST:]PORT with a port from 0 to 65535, not {text!r}")
    return host or DEFAULT_HOST, int(port_text)


def allowed_hosts(host: str) -> list[str]:
    """The names the page answers to when bound to ``host``: its loopback names on a loopback
    address, any name elsewhere (the address was chosen to be reached from other machines)."""
    if host == "localhost":
        return _LOOPBACK_NAMES
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        if address.is_loopback:
            return [*_LOOPBACK_NAMES, f"[{host}]" if address.version == 6 else host]
    return ["*"]


def serve(address: str, *, audit_log: str | None = None) -> int:
    """Serve the store's pages at ``address`` until stopped; the exit code."""
    host, port = parse_address(address)
    try:
        import uvicorn

        from orchestrator.web.app import create_app
    except ImportError as exc:
        raise ConfigError(
            f"--serve needs the web extra ({exc.name} is missing): "
            "pip install 'orchestrator-llm[web]'"
        ) from exc
    if audit_log is not None and not Path(audit_log).is_file():
        raise ConfigError(f"--audit-log {audit_log}: no such file to check")
    listener = _listen(host, port)
    app = create_app(audit_log=audit_log, allowed_hosts=allowed_hosts(host))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            server_header=False,
            # A page following a run keeps no request open: a stop never waits on a reader.
            timeout_graceful_shutdown=2,
        )
    )
    # SIGTERM stops it as Ctrl-C does (the server, having shut down, raises the signal again).
    terminate = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(_serve(server, listener))
    except KeyboardInterrupt:
        pass  # how a server is meant to be stopped
    finally:
        listener.close()
        signal.signal(signal.SIGTERM, terminate)
    return 0


async def _serve(server: uvicorn.Server, listener: socket.socket) -> None:
    # The store is opened once before the first request, so a store that cannot be used is one
    # line and an exit status rather than a failed start-up inside the server.
    async with StateManager() as state:
        await state.open()
    host, port = listener.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    print(
        f"serving the saved projects at http://{shown_host}:{port}/ (read-only; Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    await server.serve(sockets=[listener])


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Named TCP, so that asyncio sets TCP_NODELAY on each connection (it looks at the protocol
    # number): else a kept-alive connection waits ~40 ms for a delayed ACK on every answer.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
    except OSError as exc:
        listener.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(f"--serve {host}:{port}: cannot listen there ({reason})") from exc
    return listener
