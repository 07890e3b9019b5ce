"""Metrics: the design's exporters, fed by the run, written so no collector reads half a file."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading

import pytest
from conftest import fake_env
from prometheus_client.parser import text_string_to_metric_families
from scripted_llm import TaskScript
from test_resume import FAST

from orchestrator import Budget, ConfigError, Orchestrator, UnifiedClient
from orchestrator.observe.metrics import (
    ConsoleExporter,
    JSONExporter,
    MetricsSnapshot,
    PrometheusExporter,
    exporter_for,
)
from orchestrator.run.tasks import ProjectStatus, Task, TaskType

TASKS = {
    "core": Task("core", TaskType.CODE_GEN, "[core] Write add(a, b) with tests.", [],
                 ["python_syntax"]),
    "docs": Task("docs", TaskType.WRITING, "[docs] Write a README section.", ["core"], []),
}  # fmt: skip

PER_MODEL = ("calls_total", "success_rate", "latency_avg_ms", "latency_p95_ms", "quality_score",
             "trust_factor", "cost_avg_usd", "validator_failures_total")  # fmt: skip


async def run(fake, exporter=None):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=5.0), client=client, use_cache=False)
        if exporter is not None:
            orch.set_metrics_exporter(exporter)
        state = await orch.run_project("[project] add", "add works", tasks=TASKS)
        return orch, state


async def test_the_design_examples_export_every_model_metric_and_the_run(fake, llm, tmp_path):
    llm.scripts["core"] = TaskScript(scores=[0.9], broken_versions={1})  # 1st revision broken
    orch, state = await run(fake)
    # The model whose revision failed its checks (its work then went to another model).
    (profile,) = [p for p in orch.profiles.values() if p.validator_failures]
    author = profile.model

    table = io.StringIO()
    orch.set_metrics_exporter(ConsoleExporter(table))
    orch.export_metrics()
    orch.set_metrics_exporter(JSONExporter(tmp_path / "metrics.json"))
    orch.export_metrics()
    orch.set_metrics_exporter(PrometheusExporter(tmp_path / "orchestrator.prom"))
    orch.export_metrics()

    assert author.key in table.getvalue()
    assert f"run {state.project_id}: SUCCESS" in table.getvalue()

    exported = json.loads((tmp_path / "metrics.json").read_text())
    model = exported["models"][author.key]
    assert all(name in model for name in PER_MODEL)
    assert model["calls_total"] == profile.calls >= 2
    assert model["validator_failures_total"] == profile.validator_failures == 1
    assert model["latency_p95_ms"] == profile.latency_p95_ms
    assert exported["run"]["spent_usd"] == state.budget.spent_usd > 0
    assert exported["run"]["tasks"]["completed"] == 2

    families = {f.name: f for f in text_string_to_metric_families(
        (tmp_path / "orchestrator.prom").read_text())}  # fmt: skip
    calls = {s.labels["model"]: s.value for s in families["orchestrator_model_calls"].samples}
    assert families["orchestrator_model_calls"].type == "counter"
    assert calls[author.key] == profile.calls
    for name in PER_MODEL:
        assert f"orchestrator_model_{name.removesuffix('_total')}" in families
    (spent,) = families["orchestrator_run_spent_usd"].samples
    assert spent.value == pytest.approx(state.budget.spent_usd)
    status = families["orchestrator_run_status"].samples
    assert [(s.labels["status"], s.value) for s in status] == [("SUCCESS", 1.0)]


class Recording:
    follows_run = True

    def __init__(self) -> None:
        self.snapshots: list[MetricsSnapshot] = []

    def export(self, snapshot: MetricsSnapshot) -> None:
        self.snapshots.append(snapshot)


async def test_a_file_exporter_follows_the_run_and_ends_on_its_final_figures(fake, llm):
    recording = Recording()

    _, state = await run(fake, recording)

    runs = [s.run for s in recording.snapshots]
    assert any(r.tasks["completed"] == 1 for r in runs)  # written after the first task
    assert runs[-1].status == "SUCCESS" and runs[-1].tasks["completed"] == 2
    assert runs[-1].spent_usd == state.budget.spent_usd


async def test_two_projects_at_once_on_one_orchestrator_each_export_their_own_figures(fake, llm):
    recording = Recording()
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=5.0), client=client, use_cache=False)
        orch.set_metrics_exporter(recording)
        first, second = await asyncio.gather(
            orch.run_project("[project] add", "add works", "first", tasks=TASKS),
            orch.run_project("[project] add", "add works", "second", tasks=TASKS),
        )

    for state in (first, second):
        mine = [s.run for s in recording.snapshots if s.run.project_id == state.project_id]
        assert any(r.tasks["completed"] == 1 for r in mine)  # after its own first task
        assert mine[-1].status == "SUCCESS" and mine[-1].tasks["completed"] == 2
        assert mine[-1].spent_usd == state.budget.spent_usd


async def test_a_collector_never_reads_half_a_metrics_file(fake, llm, tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("{}")
    reads, half_read, stop = [], [], threading.Event()

    def collector():
        while not stop.is_set():
            text = path.read_text()
            try:
                reads.append(json.loads(text).get("run", {}).get("status"))
            except ValueError:
                half_read.append(text)

    reader = threading.Thread(target=collector)
    reader.start()
    try:
        await run(fake, JSONExporter(path))
    finally:
        stop.set()
        reader.join()

    assert not half_read
    assert "RUNNING" in reads  # read while the run went on
    assert json.loads(path.read_text())["run"]["status"] == "SUCCESS"
    assert not list(tmp_path.glob(".metrics.json.*"))  # no temporary file left behind


async def test_a_failing_exporter_is_logged_once_and_the_run_goes_on(fake, llm, tmp_path, caplog):
    unwritable = JSONExporter(tmp_path / "missing-directory" / "metrics.json")

    with caplog.at_level(logging.WARNING):
        _, state = await run(fake, unwritable)

    assert state.status is ProjectStatus.SUCCESS
    assert len([r for r in caplog.records if "metrics export failed" in r.message]) == 1


def test_prometheus_without_its_extra_is_a_one_line_error_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed

    with pytest.raises(ConfigError, match=r"pip install -e '\.\[metrics\]'"):
        PrometheusExporter("orchestrator.prom")


def test_the_metrics_file_suffix_chooses_the_format():
    assert isinstance(exporter_for("-"), ConsoleExporter)
    assert isinstance(exporter_for("m.json"), JSONExporter)
    assert isinstance(exporter_for("m.prom"), PrometheusExporter)
    with pytest.raises(ConfigError, match=r"\.prom or \.json"):
        exporter_for("metrics.txt")
