"""``python tests/cli_without_waits.py ARGS``: the command line as ``python -m orchestrator ARGS``
runs it, except that its retries do not wait (``run_cli(..., retry_waits=False)``), for the tests
whose vendors fail on purpose. The delays asked for are the client's tests' to check."""

import asyncio
import runpy


async def _no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


def stop_waiting() -> None:
    """Every retry policy's default clock no longer waits (imported here: the fork server of
    ``cli_forks.py`` imports nothing of ours)."""
    from orchestrator.llm import retry

    retry.SYSTEM_CLOCK.sleep = _no_wait  # type: ignore[method-assign]


if __name__ == "__main__":
    stop_waiting()
    runpy.run_module("orchestrator", run_name="__main__", alter_sys=True)
