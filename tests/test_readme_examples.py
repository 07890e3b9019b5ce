"""The README's examples of hooks, telemetry, metrics and the audit log run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import PROJECT_ROOT, clean_environment
from prometheus_client.parser import text_string_to_metric_families
from test_cli_run import cli_env

# The README's sections, in its order, by how each begins, and a line their example must hold
# (so that a section losing its example cannot quietly borrow the next one's).
SECTIONS = {
    "**Hooks**": "orch.add_hook(",
    "**Telemetry.**": "orch.telemetry.measured()",
    "**Metrics**": "PrometheusExporter(",
    "**Audit log**": "verify(",
}
JSON_PATH = "/tmp/orchestrator_metrics.json"
PROM_PATH = "/var/lib/node_exporter/orchestrator.prom"


def example_of(readme: str, heading: str) -> str:
    section = readme.split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def observability_examples() -> list[str]:
    readme = (PROJECT_ROOT / "README.md").read_text()
    examples = []
    for heading, must_hold in SECTIONS.items():
        example = example_of(readme, heading)
        assert must_hold in example, f"the README's {heading} section has lost its example"
        examples.append(example)
    return examples


def test_the_hooks_telemetry_metrics_and_audit_examples_run_as_written(fake, llm, tmp_path):
    metrics_json, metrics_prom = tmp_path / "metrics.json", tmp_path / "orchestrator.prom"
    # One program, as a reader goes on from one example to the next; the files it writes are
    # kept in this test's directory.
    script = "\n".join(observability_examples())
    script = script.replace(JSON_PATH, str(metrics_json)).replace(PROM_PATH, str(metrics_prom))
    (tmp_path / "examples.py").write_text(script)

    result = subprocess.run(
        [sys.executable, "examples.py"],
        cwd=tmp_path,
        env={**clean_environment(), **cli_env(fake, tmp_path)},
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    scored = [line for line in printed if re.fullmatch(r"\[\w+\] score=\d\.\d{3}", line)]
    assert len(scored) >= 5  # the TASK_COMPLETED hook, once per task of the plan
    measured = [line for line in printed if re.match(r"\w+/\S+ \d+ \d", line)]
    assert any(line.startswith("kimi/") for line in measured)  # telemetry, model by model
    assert any(line.startswith("run ") and "SUCCESS" in line for line in printed)  # the table
    assert json.loads(metrics_json.read_text())["models"]
    families = {f.name for f in text_string_to_metric_families(metrics_prom.read_text())}
    assert "orchestrator_model_calls" in families
    ok, records, head = printed[-1].split()
    assert ok == "True" and int(records) > 0 and len(head) == 64  # the audit chain verified
    assert (tmp_path / "audit.jsonl").exists()
