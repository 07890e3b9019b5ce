"""What each routing backend spends on the same project over the fake provider.

Runs ``python -m orchestrator --routing NAME`` as a user does, with the real vendor SDKs over
HTTP to the fake provider, on the scripted five-task project of ``forecast_error.py`` (code with
pytest, a review, docs, a summary, an extraction; the code task needs three iterations), answers
billed at ``--share`` of each request's output limit. For each backend, ``--rounds`` fresh state
directories, each with two runs: the first starts from the catalog alone, the second from what
the first left in the store (telemetry, cost estimates). Prints each backend's median spend of
first and second runs, its ratio to the routing table's, and how many runs ended SUCCESS.

Every answer the fake gives passes its checks (but the code task's first two versions, which
its evaluators score low whoever wrote them), so this measures what each backend pays for the
same work, not how well it avoids failing models: ``adaptive_routing.py`` simulates that.

    python benchmarks/routing_spend.py [--rounds 3] [--share 0.3] [--budget 1.0]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from cli_end_to_end import environment  # noqa: E402
from fake_provider import FakeProvider  # noqa: E402
from forecast_error import cli, project_document, spent  # noqa: E402
from scripted_llm import ScriptedLLM, TaskScript  # noqa: E402

BACKENDS = ("table", "greedy", "adaptive")


def one_round(
    backend: str, fake: FakeProvider, work: Path, share: float, budget: float
) -> list[tuple[float, str]]:
    """Two runs in one fresh state directory: (spend, final status) of each."""
    home = work / "home"
    env = environment(fake.base_url, home)
    project = work / "project.json"
    project.write_text(json.dumps(project_document(budget)))
    runs = []
    for _ in range(2):
        before = spent(home) if (home / "state.db").exists() else 0.0
        # A fresh script each run: the same scores for the same versions, so runs compare.
        fake.responder = ScriptedLLM(
            output_share=share, scripts={"core": TaskScript(scores=[0.6, 0.75, 0.9])}
        )
        out = cli(["--file", str(project), "--no-cache", "--routing", backend], env, work)
        status = re.search(r"^status (\w+):", out, re.M)
        runs.append((spent(home) - before, status[1] if status else "?"))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--share", type=float, default=0.3, help="share of the output limit")
    parser.add_argument("--budget", type=float, default=1.0)
    args = parser.parse_args()
    results: dict[str, list[list[tuple[float, str]]]] = {b: [] for b in BACKENDS}
    with FakeProvider() as fake, tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):
            for backend in BACKENDS:  # interleaved: a drifting machine touches all alike
                work = Path(tmp) / f"{backend}-{index}"
                work.mkdir()
                results[backend].append(one_round(backend, fake, work, args.share, args.budget))
    print(
        f"5-task project over the fake provider, answers at {args.share:.0%} of their limit, "
        f"{args.rounds} rounds of two runs per backend (medians)"
    )
    print(f"{'backend':<9} {'1st run':>9} {'vs table':>9} {'2nd run':>9} {'vs table':>9} "
          f"{'SUCCESS':>8}")  # fmt: skip
    medians = {
        b: [statistics.median(r[i][0] for r in rounds) for i in (0, 1)]
        for b, rounds in results.items()
    }
    for backend, (first, second) in medians.items():
        table_first, table_second = medians["table"]
        succeeded = sum(status == "SUCCESS" for r in results[backend] for _, status in r)
        print(
            f"{backend:<9} ${first:>8.4f} {first / table_first:>8.2f}x ${second:>8.4f} "
            f"{second / table_second:>8.2f}x {succeeded:>4}/{2 * args.rounds}"
        )


if __name__ == "__main__":
    main()
