"""What importing the package, and asking the command line for its help, cost a new process.

Times fresh interpreters, ``--runs`` rounds, each round running every command once in turn (so
a machine's drift touches them all alike): ``python -c pass`` (the interpreter's own start, the
yardstick), ``import orchestrator``, ``from orchestrator import Orchestrator`` and ``python -m
orchestrator --help``. Prints the median wall and CPU time of each (CPU: user + system, from
the operating system's accounting of the finished child) and what each adds to the yardstick;
then ``python -X importtime``'s figure for ``import orchestrator`` alone. Target: ``import
orchestrator`` under 150 ms.

``--against DIR`` times the same commands from another source tree (e.g. a checkout of an older
commit) beside this one's. Python normally keeps compiled bytecode beside the sources; where it
is told not to (PYTHONDONTWRITEBYTECODE), every run compiles every module it imports, and
``--compile`` writes the bytecode first so the figures are those of an installed package.

    python benchmarks/import_time.py [--runs 20] [--against DIR] [--compile]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "import orchestrator": ["-c", "import orchestrator"],
    "from orchestrator import Orchestrator": ["-c", "from orchestrator import Orchestrator"],
    "python -m orchestrator --help": ["-m", "orchestrator", "--help"],
}
TARGET_MS = 150.0


def environment(tree: Path) -> dict[str, str]:
    """This process's environment with ``tree`` first on the import path."""
    paths = [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def timed(args: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """One fresh interpreter's wall and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, cwd=cwd, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def import_time_ms(env: dict[str, str], cwd: str) -> float:
    """``-X importtime``'s cumulative figure for ``import orchestrator``, in ms."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import orchestrator"],
        env=env, cwd=cwd, check=True, capture_output=True, text=True,
    )  # fmt: skip
    last = [line for line in done.stderr.splitlines() if line.endswith("| orchestrator")][-1]
    return int(last.split("|")[1]) / 1000


def measure(trees: dict[str, Path], runs: int) -> dict[str, dict[str, tuple[float, float]]]:
    """Median (wall, cpu) seconds per tree and command, the commands taken in turn."""
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as cwd:  # no package in the working directory
        envs = {name: environment(tree) for name, tree in trees.items()}
        for name in trees:
            for args in COMMANDS.values():
                timed(args, envs[name], cwd)  # warm-up: the page cache, and any bytecode
        for _ in range(runs):
            for name in trees:
                for label, args in COMMANDS.items():
                    samples.setdefault((name, label), []).append(timed(args, envs[name], cwd))
        figures: dict[str, dict[str, tuple[float, float]]] = {}
        for (name, label), times in samples.items():
            wall = statistics.median(w for w, _ in times)
            cpu = statistics.median(c for _, c in times)
            figures.setdefault(name, {})[label] = (wall, cpu)
        importtime = {
            name: statistics.median(import_time_ms(envs[name], cwd) for _ in range(runs))
            for name in trees
        }
    for name, ms in importtime.items():
        figures[name]["-X importtime"] = (ms / 1000, float("nan"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--against", type=Path, metavar="DIR", help="another source tree")
    parser.add_argument(
        "--compile", action="store_true", help="write each tree's bytecode before timing"
    )
    args = parser.parse_args()
    trees = {"this tree": HERE}
    if args.against is not None:
        trees["against"] = args.against.resolve()
    for tree in trees.values():
        if not (tree / "orchestrator" / "__init__.py").is_file():
            parser.error(f"{tree} holds no orchestrator package")
        if args.compile:
            subprocess.run(
                [sys.executable, "-m", "compileall", "-q", str(tree / "orchestrator")],
                check=True, capture_output=True,
            )  # fmt: skip
    figures = measure(trees, args.runs)
    no_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE")) and not args.compile
    print(
        f"median of {args.runs} fresh processes, ms: wall / cpu (what it adds to python -c pass)"
        + (
            "\nPYTHONDONTWRITEBYTECODE is set: a module without up-to-date bytecode is compiled at "
            "every run (--compile writes it)"
            if no_bytecode
            else ""
        )
    )
    print(f"{'':40}" + "".join(f"{name:>28}" for name in trees))
    for label in [*COMMANDS, "-X importtime"]:
        row = f"{label:40}"
        for name in trees:
            wall, cpu = figures[name][label]
            if label == "-X importtime":
                row += f"{wall * 1000:>28.1f}"
                continue
            base_wall, base_cpu = figures[name]["python -c pass"]
            cell = f"{wall * 1000:.0f} / {cpu * 1000:.0f}"
            if label != "python -c pass":
                cell += f" (+{(wall - base_wall) * 1000:.0f} / +{(cpu - base_cpu) * 1000:.0f})"
            row += f"{cell:>28}"
        print(row)
    ours = figures["this tree"]["-X importtime"][0] * 1000
    verdict = "met" if ours < TARGET_MS else "MISSED"
    print(f"import orchestrator, by -X importtime: {ours:.1f} ms (< {TARGET_MS:.0f}: {verdict})")


if __name__ == "__main__":
    main()
