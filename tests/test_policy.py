"""Policies: checked at every model choice, HARD / SOFT / MONITOR, from files, before any spend."""

from __future__ import annotations

import json

import pytest
from conftest import ALIAS_BOMB, DEEP_LIST, PROJECT_ROOT, fake_env, run_cli, write_file
from test_resume import FAST

from orchestrator import Budget, Catalog, ConfigError, Orchestrator, UnifiedClient
from orchestrator.routing.policy import EnforcementMode, Policy, PolicyHierarchy, PolicySet
from orchestrator.routing.policy_file import PolicyAnalyzer, PolicyError, load_policy_file
from orchestrator.routing.profiles import ModelProfile
from orchestrator.run.tasks import ProjectStatus, Task, TaskType

CODE_TASK = {"core": Task("core", TaskType.CODE_GEN, "[core] Write add(a, b) with tests.")}

DESIGN_POLICIES_YAML = """
global:
  - name: gdpr
    allow_training_on_output: false
    enforcement_mode: hard
team:
  eng:
    - name: eu_only
      allowed_regions: [eu, global]
job:
  job_001:
    - name: cost_cap
      max_cost_per_task_usd: 0.50
      max_latency_ms: 5000.0
"""


def profile_of(name: str, **measured) -> ModelProfile:
    catalog = Catalog.load(env={})
    model = catalog.resolve(name)
    provider = catalog.provider_of(model)
    return ModelProfile(model, provider.region, provider.trains_on_output, 0.8, **measured)


def test_each_rule_says_what_it_objects_to():
    kimi, claude = profile_of("kimi"), profile_of("claude-opus", latency_ms=9000)

    assert [str(v) for v in Policy("p", blocked_providers=["kimi"]).check(kimi, 0.01)] == [
        "p: provider kimi is blocked"
    ]
    assert str(Policy("gdpr", allow_training_on_output=False).check(kimi, 0)[0]) == (
        "gdpr: kimi may train on API output"
    )
    assert str(Policy("eu", allowed_regions=["eu"]).check(claude, 0)[0]) == (
        "eu: region us is not allowed"
    )
    assert str(Policy("m", allowed_models=["gpt-4o"]).check(claude, 0)[0]) == (
        "m: model claude-opus-5 is not allowed"
    )
    assert Policy("alias", allowed_models=["Claude Opus"]).check(claude, 0) == []
    assert str(Policy("sla", max_latency_ms=5000).check(claude, 0)[0]) == (
        "sla: latency 9000 ms > 5000 ms"
    )
    assert str(Policy("cap", max_cost_per_task_usd=0.01).check(claude, 0.05)[0]) == (
        "cap: a call costs about $0.0500 > $0.01"
    )


@pytest.mark.parametrize(
    ("mode", "blocks_region", "blocks_cost"),
    [
        (EnforcementMode.HARD, True, True),
        (EnforcementMode.SOFT, True, False),
        (EnforcementMode.MONITOR, False, False),
    ],
)
def test_enforcement_modes_decide_what_blocks(mode, blocks_region, blocks_cost):
    policy = Policy("p", allowed_regions=["eu"], max_cost_per_task_usd=0.01, enforcement_mode=mode)

    region, cost = policy.check(profile_of("gpt-4o"), 0.05)

    assert (region.rule, region.blocking) == ("allowed_regions", blocks_region)
    assert (cost.rule, cost.blocking) == ("max_cost_per_task_usd", blocks_cost)


def test_the_design_documents_hierarchy_example_runs():
    hier = PolicyHierarchy(
        org=[Policy("gdpr", allow_training_on_output=False)],
        team={"eng": [Policy("eu_only", allowed_regions=["eu", "global"])]},
    )
    policies = hier.policies_for(team="eng", job_id="job_001")

    assert [p.name for p in policies] == ["gdpr", "eu_only"]
    assert [p.name for p in hier.policies_for()] == ["gdpr"]


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_the_design_documents_policy_file_loads_as_yaml_or_json(tmp_path, suffix):
    import yaml

    document = yaml.safe_load(DESIGN_POLICIES_YAML)
    text = json.dumps(document) if suffix == ".json" else DESIGN_POLICIES_YAML
    path = write_file(tmp_path / f"policies{suffix}", text)

    hierarchy = load_policy_file(path)
    report = PolicyAnalyzer.analyze(hierarchy.policies_for(team="eng"))

    assert [p.name for p in hierarchy.policies_for(team="eng", job_id="job_001")] == [
        "gdpr", "eu_only", "cost_cap",
    ]  # fmt: skip
    assert hierarchy.job["job_001"][0].max_latency_ms == 5000.0
    assert report.is_clean()
    assert report.info == [
        "no policy caps the cost of a task (max_cost_per_task_usd)",
        "no policy sets a latency SLA (max_latency_ms)",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("team:\n  eng:\n    - name: eu_only\n      allowed_region: [eu]\n",
         "team.eng[0] (eu_only): unknown field 'allowed_region' (did you mean 'allowed_regions'?)"),
        ("global:\n  - name: x\n    enforcement_mode: strict\n",
         "global[0] (x).enforcement_mode: 'strict' is not one of: hard, soft, monitor"),
        ("global:\n  - allowed_providers: [openai]\n", "global[0]: missing field 'name'"),
        ("global: [\n", "not valid YAML"),
        ("job:\n  j:\n    - name: cap\n      max_cost_per_task_usd: -1\n", "job.j[0] (cap)"),
    ],
)  # fmt: skip
def test_a_bad_policy_file_is_one_line_naming_the_file_and_the_entry(tmp_path, text, message):
    path = write_file(tmp_path / "bad.yaml", text)

    with pytest.raises(PolicyError) as caught:
        load_policy_file(path)

    assert str(caught.value).startswith(f"policy file {path}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_analyzer_finds_contradictions_and_gaps():
    report = PolicyAnalyzer.analyze(
        [
            Policy("a", allowed_providers=["openai"], blocked_providers=["openai"]),
            Policy("b", allowed_regions=[]),
            Policy("c", allowed_providers=["anthropic"], max_cost_per_task_usd=1),
        ]
    )

    assert report.errors == [
        "policy a: providers both allowed and blocked: openai",
        "policy b: allowed_regions is empty: no model fits",
    ]
    assert report.warnings == ["policies a and c allow no provider in common"]
    assert report.info == ["no policy sets a latency SLA (max_latency_ms)"]
    assert not report.is_clean()


async def run(fake, policies, *, events=None, budget=5.0):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(
            budget=Budget(max_usd=budget), client=client, use_cache=False, policies=policies
        )
        if events is not None:
            orch.emit = events.append
        return await orch.run_project("[project] add", "add works", tasks=CODE_TASK)


def decisions(events):
    return {(e.role, e.task_id): e.data["decision"] for e in events if e.kind == "model_selected"}


async def test_a_hard_policy_keeps_its_models_out_of_every_choice(fake, llm):
    events = []
    state = await run(fake, [Policy("no_kimi", blocked_providers=["kimi"])], events=events)

    assert state.status is ProjectStatus.SUCCESS
    assert state.results["core"].model_used.provider != "kimi"
    assert fake.count(model="kimi-k2.6") == 0  # not as author, critic or evaluator
    author = decisions(events)[("generation", "core")]
    assert "kimi-k2.6" not in [m.value for m in author.chain]
    assert ("kimi-k2.6", "excluded by policy no_kimi: provider kimi is blocked") in [
        (m.value, why) for m, why in author.excluded
    ]


async def test_soft_and_monitor_policies_let_models_through_and_record_why(fake, llm):
    events = []
    soft = Policy("cap", max_cost_per_task_usd=0.000001, enforcement_mode=EnforcementMode.SOFT)
    watch = Policy("watch", blocked_providers=["kimi"], enforcement_mode="monitor")

    state = await run(fake, [soft, watch], events=events)

    assert state.results["core"].model_used.value == "kimi-k2.6"  # routed as without policies
    author = decisions(events)[("generation", "core")]
    recorded = author.violations["kimi/kimi-k2.6"]
    assert any(v.startswith("cap: a call costs about $") for v in recorded)
    assert "watch: provider kimi is blocked" in recorded
    assert "policy violations allowed" in author.explain()


async def test_policies_that_leave_a_task_type_without_a_model_refuse_the_run_unpaid(fake, llm):
    gdpr = Policy("gdpr", allow_training_on_output=False)
    eu_only = Policy("eu_only", allowed_regions=["eu", "global"])

    with pytest.raises(ConfigError, match=r"leave no model for: code_generation, evaluation"):
        await run(fake, PolicySet([gdpr, eu_only]))

    assert fake.count() == 0


async def test_a_resumed_project_keeps_the_policies_it_was_started_with(fake, llm):
    llm.bill_max_output = True
    stopped = await run(fake, [Policy("no_kimi", blocked_providers=["kimi"])], budget=0.002)
    assert stopped.status is ProjectStatus.BUDGET_EXHAUSTED

    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(client=client, use_cache=False)  # no policies given
        resumed = await orch.resume(stopped.project_id, max_usd=5.0)

    assert resumed.status is ProjectStatus.SUCCESS
    assert fake.count(model="kimi-k2.6") == 0


def test_the_command_line_applies_a_teams_policies_and_refuses_contradictions(fake, llm, tmp_path):
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home")}
    policies = PROJECT_ROOT / "projects" / "policies.yaml"
    project = ("-p", "[project] Build an add library", "-c", "add works", "--budget", "2")

    ran = run_cli(*project, "--policy", str(policies), "--team", "eng", cwd=tmp_path, env=env)

    assert ran.returncode == 0, ran.stderr
    # no_training and us_only leave OpenAI and Anthropic only.
    used = {r.model for r in fake.requests}
    assert used and all(m.startswith(("gpt", "claude")) for m in used), used

    bad = write_file(tmp_path / "bad.yaml", "global:\n  - name: a\n    allowed_regions: []\n")
    before = fake.count()
    refused = run_cli(*project, "--policy", str(bad), cwd=tmp_path, env=env)

    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"orchestrator: error: policy file {bad}: policy a: allowed_regions is empty: no model fits"
    ]
    assert fake.count() == before


MANUAL_OVERRIDE_YAML = """
global:
  - name: performance_focused
    allowed_providers: [anthropic, openai]
    allowed_models: [claude-opus, gpt-4o]

  - name: cost_focused
    allowed_providers: [kimi, deepseek]
    allowed_models: [moonshot-v1, deepseek-chat]
"""


async def test_the_design_documents_manual_override_limits_a_run_to_the_models_it_names(
    fake, llm, tmp_path
):
    hierarchy = load_policy_file(write_file(tmp_path / "override.yaml", MANUAL_OVERRIDE_YAML))
    both = hierarchy.policies_for()

    # Together they allow nothing: the analyzer says so before any run.
    report = PolicyAnalyzer.analyze(both)
    assert report.warnings == [
        "policies performance_focused and cost_focused allow no provider in common"
    ]
    with pytest.raises(ConfigError, match="leave no model for: code_generation, evaluation"):
        await run(fake, both)

    events = []
    state = await run(fake, [both.policies[0]], events=events)

    assert state.status is ProjectStatus.SUCCESS
    assert {r.model for r in fake.requests} <= {"claude-opus-5", "gpt-4o"}
    assert state.results["core"].model_used.value in {"claude-opus-5", "gpt-4o"}


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("deep.json", f'{{"global": {DEEP_LIST}}}', "refused: nested more than 100 levels deep"),
        ("bomb.yaml", f"global: {ALIAS_BOMB}\n", "more than 100000 values once its aliases"),
    ],
)
def test_a_policy_file_too_big_to_read_is_refused_in_one_line_before_any_call(
    fake, tmp_path, name, text, expected
):
    policy = write_file(tmp_path / name, text)

    result = run_cli(
        "-p", "[project] Build an add library", "-c", "add works", "--policy", str(policy),
        cwd=tmp_path, env=fake_env(fake.base_url), timeout=20,
    )  # fmt: skip

    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"orchestrator: error: policy file {policy}: ")
    assert expected in line
    assert fake.count() == 0
