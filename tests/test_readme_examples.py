"""The examples of hooks, telemetry, metrics and the audit log (docs/observability.md) run as
written."""

from __future__ import annotations

import json
import re

from conftest import PROJECT_ROOT
from prometheus_client.parser import text_string_to_metric_families
from test_cli_run import run_example

PAGE = PROJECT_ROOT / "docs" / "observability.md"
# The page's sections, in its order, by their headings, and a line their example must hold
# (so that a section losing its example cannot quietly borrow the next one's).
SECTIONS = {
    "\n## Hooks\n": "orch.add_hook(",
    "\n## Telemetry\n": "orch.telemetry.measured()",
    "\n## Metrics\n": "PrometheusExporter(",
    "\n## Audit log\n": "verify(",
}
JSON_PATH = "/tmp/orchestrator_metrics.json"
PROM_PATH = "/var/lib/node_exporter/orchestrator.prom"


def example_of(page: str, heading: str) -> str:
    section = page.split(heading, 1)[1].split("\n## ", 1)[0]
    assert "```python\n" in section, f"the {heading.strip()} section has no example"
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def observability_examples() -> list[str]:
    page = PAGE.read_text(encoding="utf-8")
    assert [page.index(heading) for heading in SECTIONS] == sorted(
        page.index(heading) for heading in SECTIONS
    ), "the sections are out of order: the examples go on from one another"
    examples = []
    for heading, must_hold in SECTIONS.items():
        example = example_of(page, heading)
        assert must_hold in example, f"{PAGE.name}'s {heading.strip()} section has lost its example"
        examples.append(example)
    return examples


def test_the_hooks_telemetry_metrics_and_audit_examples_run_as_written(fake, llm, tmp_path):
    metrics_json, metrics_prom = tmp_path / "metrics.json", tmp_path / "orchestrator.prom"
    # One program, as a reader goes on from one example to the next; the files it writes are
    # kept in this test's directory.
    script = "\n".join(observability_examples())
    script = script.replace(JSON_PATH, str(metrics_json)).replace(PROM_PATH, str(metrics_prom))

    result = run_example(script, fake, tmp_path, timeout=240)

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
