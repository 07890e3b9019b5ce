"""How far ``--forecast`` is from what runs really spend, at three answer lengths.

Runs ``python -m orchestrator`` as a user does, with the real vendor SDKs talking HTTP to the
fake provider, on the scripted five-task project of the tests (code, a review, docs, a summary,
an extraction; the code task needs three iterations). For each answer length (short: a few
words; medium: 30 % of each request's output limit; long: all of it) in a fresh state
directory: a forecast, a run, a second forecast (which learns from the first run's journal and
cost estimates) and a second run. Prints each forecast's typical and high figures beside what
the run after it spent, and the error ratios (forecast / actual); "limits" is the worst the
run's limits allow, the high figure before the budget caps it.

    python benchmarks/forecast_error.py [--budget 1.0]
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from cli_end_to_end import environment  # noqa: E402
from fake_provider import FakeProvider  # noqa: E402
from scripted_llm import ScriptedLLM, TaskScript, default_plan  # noqa: E402

from orchestrator.money.units import nanos_to_usd  # noqa: E402

LENGTHS = {"short": None, "medium": 0.3, "long": 1.0}  # share of the output limit billed
# (length, learned, typical, high, worst, actual)
Row = tuple[str, bool, float, float, float, float]


def project_document(budget: float) -> dict[str, Any]:
    return {
        "project": "[project] An add library",
        "criteria": "add works and is documented",
        "budget": budget,
        "tasks": default_plan(),
    }


def cli(args: list[str], env: dict[str, str], work: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env, cwd=work, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode not in (0, 1, 3):  # success, partial success, budget exhausted
        sys.exit(f"orchestrator {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def forecast(project: Path, env: dict[str, str], work: Path) -> tuple[float, float, float, bool]:
    """The typical and high figures ``--forecast`` prints, the worst the run's limits allow
    (the high figure before the budget caps it), and whether it learned anything."""
    text = cli(["--file", str(project), "--forecast"], env, work)
    typical = re.search(r"^typical \$([\d.,]+) of", text, re.M)
    high = re.search(r"^high \$([\d.,]+)", text, re.M)
    if not typical or not high:
        sys.exit(f"no figures in the forecast:\n{text}")
    worst = re.search(r"the run's limits allow \$([\d.,]+)", text) or high
    typical_usd, high_usd, worst_usd = (dollars(m[1]) for m in (typical, high, worst))
    return typical_usd, high_usd, worst_usd, "learned from earlier runs" in text


def dollars(figure: str) -> float:
    return float(figure.replace(",", ""))


def spent(home: Path) -> float:
    """What every run in ``home`` paid, from its journal."""
    conn = sqlite3.connect(home / "state.db")
    try:
        spent = conn.execute("SELECT COALESCE(SUM(cost_nanos), 0) FROM journal").fetchone()[0]
        return nanos_to_usd(int(spent))
    finally:
        conn.close()


def measure(length: str, fake: FakeProvider, root: Path, budget: float) -> list[Row]:
    """Two (forecast, run) pairs at one answer length: rows of (length, learned, typical,
    high, worst, actual)."""
    work = root / length
    work.mkdir()
    home = work / "home"
    env = environment(fake.base_url, home)
    project = work / "project.json"
    project.write_text(json.dumps(project_document(budget)))
    rows: list[Row] = []
    for _ in range(2):
        typical, high, worst, learned = forecast(project, env, work)
        before = spent(home) if (home / "state.db").exists() else 0.0
        # A fresh script each run: the same scores for the same versions, so runs compare.
        fake.responder = ScriptedLLM(
            output_share=LENGTHS[length], scripts={"core": TaskScript(scores=[0.6, 0.75, 0.9])}
        )
        cli(["--file", str(project), "--no-cache"], env, work)
        rows.append((length, learned, typical, high, worst, spent(home) - before))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0)
    args = parser.parse_args()
    rows = []
    with FakeProvider() as fake, tempfile.TemporaryDirectory() as tmp:
        for length in LENGTHS:
            rows += measure(length, fake, Path(tmp), args.budget)
    print(f"5-task project, budget ${args.budget:.2f}; forecast / actual ratios")
    print(f"{'answers':<8} {'forecast':<9} {'typical':>9} {'high':>9} {'limits':>9} "
          f"{'actual':>9} {'typ/act':>8} {'high/act':>9} {'lim/act':>8}")  # fmt: skip
    for length, learned, typical, high, worst, actual in rows:
        source = "learned" if learned else "catalog"
        print(
            f"{length:<8} {source:<9} ${typical:>8.4f} ${high:>8.4f} ${worst:>8.4f} "
            f"${actual:>8.4f} {typical / actual:>7.2f}x {high / actual:>8.2f}x "
            f"{worst / actual:>7.2f}x"
        )
    below = [r for r in rows if r[3] < r[5] - 1e-9]
    print("high never below actual" if not below else f"HIGH BELOW ACTUAL in {len(below)} runs")


if __name__ == "__main__":
    main()
