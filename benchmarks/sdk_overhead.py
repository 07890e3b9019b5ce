"""CPU per paid call through the orchestrator against the same calls made straight through the SDK.

Runs ``--tasks`` small code tasks (explicit tasks, no planner, no dependencies) through
``Orchestrator.run_project`` with the real ``openai`` SDK over HTTP to the fake provider, the
default SQLite store in a temporary ``$ORCHESTRATOR_HOME`` and the cache off; then sends the very
requests that run sent (same bodies, prompts and count, in the same order) straight through
``openai.AsyncOpenAI(base_url=..., max_retries=0)`` at the same concurrency. Only OpenAI is keyed,
so both sides use the same SDK. Each task's only validator is ``python_syntax`` (compiled in a
thread, no sandbox): what is measured is the orchestrator's bookkeeping, not the sandbox.

Each side runs in a fresh process of its own (neither warms the other's imports or SDK), and
its CPU is that process's own, all threads included, plus any children's, from just before the
client is made to just after it is closed (imports are not counted). The fake provider runs in
a process of its own, so its CPU counts on neither side. Rounds alternate A B A B and the
figures are medians. Prints calls, CPU ms per call for each side, and their ratio (target
< 1.5).

    python benchmarks/sdk_overhead.py [--tasks 120] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
RATIO_TARGET = 1.5
VERDICT = json.dumps({"score": 0.95, "reasoning": "meets the criteria"})
ANSWER = "Here is the function.\n\n```python\ndef add(a, b):\n    return a + b\n```\n"


def responder(request: Any) -> str:
    """The fake provider's answers: a verdict to an evaluation, a small valid module otherwise."""
    return VERDICT if request.wants_json else ANSWER


def cpu_seconds() -> float:
    """This process's CPU (every thread) and its reaped children's, user + system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# -- the two sides, each run in a process of its own ---------------------------------------------
async def through_orchestrator(tasks: int, concurrency: int) -> dict[str, float]:
    import openai  # noqa: F401 - imported before the clock starts, as on the SDK's side

    from orchestrator import Budget, Orchestrator, StateManager, Task, TaskType

    graph = {
        f"t{i:03d}": Task(f"t{i:03d}", TaskType.CODE_GEN, f"Write add_{i}(a, b).", [],
                          ["python_syntax"])
        for i in range(tasks)
    }  # fmt: skip
    started, wall = cpu_seconds(), time.perf_counter()
    store = StateManager()
    orchestrator = Orchestrator(
        budget=Budget(max_usd=100.0, max_time_seconds=600),
        state_manager=store,
        max_concurrency=concurrency,
        use_cache=False,
    )
    state = await orchestrator.run_project("Small functions", "each one works", tasks=graph)
    await store.aclose()
    cpu, wall = cpu_seconds() - started, time.perf_counter() - wall
    if state.status.value != "SUCCESS":
        raise SystemExit(f"the orchestrator's run ended {state.status.value}")
    # getattr: the figure is new, and a baseline checkout may not have it
    return {"cpu": cpu, "wall": wall, "transactions": getattr(store, "transactions", -1)}


async def through_sdk(bodies: list[dict[str, Any]], concurrency: int) -> dict[str, float]:
    import openai

    started, wall = cpu_seconds(), time.perf_counter()
    client = openai.AsyncOpenAI(
        base_url=os.environ["OPENAI_BASE_URL"], api_key="x", max_retries=0, timeout=60
    )
    gate = asyncio.Semaphore(concurrency)

    async def call(body: dict[str, Any]) -> str:
        async with gate:
            if body.get("stream"):
                parts = []
                stream = await client.chat.completions.create(**body)
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
                return "".join(parts)
            response = await client.chat.completions.create(**body)
            return response.choices[0].message.content or ""

    answers = await asyncio.gather(*(call(body) for body in bodies))
    await client.close()
    cpu, wall = cpu_seconds() - started, time.perf_counter() - wall
    assert all(answers), "an empty answer"
    return {"cpu": cpu, "wall": wall}


def child(args: argparse.Namespace) -> None:
    if args.side == "orchestrator":
        result = asyncio.run(through_orchestrator(args.tasks, args.concurrency))
    else:
        bodies = [json.loads(line) for line in Path(args.bodies).read_text().splitlines()]
        result = asyncio.run(through_sdk(bodies, args.concurrency))
    print(json.dumps(result))


# -- the parent: the fake provider, the rounds, the figures -------------------------------------
def start_fake(log: Path) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(TESTS)]))
    fake = subprocess.Popen(
        [sys.executable, str(TESTS / "fake_provider.py"), "--log", str(log),
         "--responder", "sdk_overhead:responder"],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert fake.stdout is not None
    return fake, fake.stdout.readline().strip()


def side_env(base_url: str, home: Path) -> dict[str, str]:
    """cli_end_to_end's environment (the user's, every vendor at the fake, a fresh home) with
    only OpenAI keyed, so that both sides go through the same SDK."""
    sys.path.insert(0, str(HERE))
    from cli_end_to_end import environment  # here: the measured processes never import it

    env = environment(base_url, home)
    return {
        name: value
        for name, value in env.items()
        if name.startswith("OPENAI_") or not name.endswith(("_API_KEY", "_BASE_URL"))
    }


def run_side(side: str, args: argparse.Namespace, env: dict[str, str], cwd: Path,
             bodies: Path | None = None) -> dict[str, float]:  # fmt: skip
    command = [sys.executable, __file__, "--side", side, "--tasks", str(args.tasks),
               "--concurrency", str(args.concurrency)]  # fmt: skip
    if bodies is not None:
        command += ["--bodies", str(bodies)]
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"the {side} side failed ({done.returncode}):\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def new_requests(log: Path, seen: int) -> tuple[list[dict[str, Any]], int]:
    """The completion requests the fake logged after the first ``seen`` lines."""
    lines = log.read_text().splitlines() if log.exists() else []
    records = [json.loads(line) for line in lines[seen:]]
    bodies = [r["body"] for r in records if r["path"].endswith("/chat/completions")]
    return bodies, len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--side", choices=("orchestrator", "sdk"), help=argparse.SUPPRESS)
    parser.add_argument("--bodies", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log = work / "requests.jsonl"
        fake, base_url = start_fake(log)
        try:
            rows = []
            seen = 0
            for index in range(args.rounds):
                home = work / f"home{index}"
                home.mkdir()
                env = side_env(base_url, home)
                ours = run_side("orchestrator", args, env, work)
                bodies, seen = new_requests(log, seen)
                path = work / f"bodies{index}.jsonl"
                path.write_text("".join(json.dumps(b) + "\n" for b in bodies))
                sdk = run_side("sdk", args, env, work, path)
                replayed, seen = new_requests(log, seen)
                assert len(replayed) == len(bodies), (len(replayed), len(bodies))
                rows.append((len(bodies), ours, sdk))
                models = Counter(
                    b["model"] + (" streamed" if b.get("stream") else "") for b in bodies
                )
        finally:
            fake.terminate()
            fake.wait(10)
    calls = rows[-1][0]
    ours_ms = statistics.median(o["cpu"] / n * 1000 for n, o, _ in rows)
    sdk_ms = statistics.median(s["cpu"] / n * 1000 for n, _, s in rows)
    ratio = statistics.median(o["cpu"] / s["cpu"] for _, o, s in rows)
    print(
        f"{args.tasks} code tasks (validator python_syntax only, no sandbox), OpenAI only, "
        f"concurrency {args.concurrency}, SQLite store, no cache; {args.rounds} rounds A B"
    )
    asked = ", ".join(f"{model} {count}" for model, count in models.most_common())
    print(f"calls: {calls} ({calls / args.tasks:.2f} a task: {asked})")
    print(
        f"orchestrator: {ours_ms:.2f} ms CPU a call (wall "
        f"{statistics.median(o['wall'] for _, o, _ in rows):.2f} s a run)"
    )
    print(
        f"SDK alone:    {sdk_ms:.2f} ms CPU a call (wall "
        f"{statistics.median(s['wall'] for _, _, s in rows):.2f} s a run)"
    )
    print(f"ratio: {ratio:.2f}x (median of the rounds' ratios; target < {RATIO_TARGET}x)")
    transactions = statistics.median(o["transactions"] / n for n, o, _ in rows)
    if transactions >= 0:
        print(f"state store: {transactions:.2f} committed transactions a paid call")


if __name__ == "__main__":
    main()
