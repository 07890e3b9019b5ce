"""The model catalog as a user relies on it: names, prices, override files and their errors."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import LOCAL_CATALOG, write_file

from orchestrator import Catalog, CatalogError, Model, Price, UnifiedClient, UnknownModelError
from orchestrator.settings import home_dir, load_environment

PROVIDERS = ("openai", "anthropic", "google", "kimi", "deepseek")

# The names used in the design document, and the current model each one must reach.
DESIGN_NAMES = {
    "GPT-4o": "gpt-4o",
    "GPT-4o-mini": "gpt-4o-mini",
    "Claude Opus": "claude-opus-5",
    "Claude Sonnet": "claude-sonnet-5",
    "Claude Haiku": "claude-haiku-4-5",
    "Gemini 2.5 Pro": "gemini-2.5-pro",
    "Gemini 2.5 Flash": "gemini-2.5-flash",
    "Kimi K2.5": "kimi-k2.6",
    "DeepSeek Chat": "deepseek-v4-flash",
    "DeepSeek Reasoner": "deepseek-v4-pro",
}


LoadUser = Callable[..., Catalog]


def write(directory: Path, text: str | bytes, name: str = "my-catalog.yaml") -> Path:
    return write_file(directory / name, text)


@pytest.fixture(scope="module")
def builtin() -> Catalog:
    return Catalog.load(env={})


@pytest.fixture(params=["argument", "ORCHESTRATOR_CATALOG"])
def load_user(request) -> LoadUser:
    """Load a user file either way a user can name it: argument or environment variable."""

    def load(path: Path, env: dict[str, str] | None = None) -> Catalog:
        env = dict(env or {})
        if request.param == "argument":
            return Catalog.load(path, env=env)
        return Catalog.load(env={**env, "ORCHESTRATOR_CATALOG": str(path)})

    return load


# -- names ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("design_name", "model_id"), DESIGN_NAMES.items())
def test_design_document_names_resolve_to_current_models(builtin, design_name, model_id):
    assert builtin.resolve(design_name).id == model_id


@pytest.mark.parametrize(
    ("name", "model_id"),
    [
        ("claude opus", "claude-opus-5"),
        ("CLAUDE OPUS", "claude-opus-5"),
        ("  Gemini 2.5 Flash ", "gemini-2.5-flash"),
        ("GPT-4O-MINI", "gpt-4o-mini"),
        ("Claude-Haiku-4-5", "claude-haiku-4-5"),
        ("deepseek-flash", "deepseek-v4-flash"),
    ],
)
def test_model_lookup_ignores_case_and_surrounding_spaces(builtin, name, model_id):
    assert builtin.resolve(name).id == model_id


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("anthropic/claude-opus-5", "anthropic/claude-opus-5"),
        ("Google/Gemini-2.5-Flash", "google/gemini-2.5-flash"),
        ("kimi/kimi-k2.6", "kimi/kimi-k2.6"),
    ],
)
def test_provider_slash_id_names_a_model(builtin, name, key):
    assert builtin.resolve(name).key == key


def test_a_model_object_resolves_to_itself(builtin):
    model = builtin.resolve("gpt-4o")
    assert builtin.resolve(model) is model


@pytest.mark.parametrize("name", ["gpt-4", "claude", "openai/claude-opus-5", ""])
def test_unknown_name_raises_and_points_to_list_models(builtin, name):
    with pytest.raises(UnknownModelError, match="--list-models") as info:
        builtin.resolve(name)
    assert repr(name) in str(info.value)


MIRROR = """
    providers:
      mirror:
        kind: gemini
        base_url: http://127.0.0.1:9999
    models:
      - id: {model_id}
        provider: mirror
        {alias_line}
        price: {{input: 1, output: 1}}
        context_window: 1000
        max_output_tokens: 100
"""


def test_same_id_under_two_providers_needs_the_provider_prefix(tmp_path):
    path = write(
        tmp_path,
        MIRROR.format(model_id="gemini-3.1-pro-preview", alias_line="alias: mirrored-pro"),
    )
    catalog = Catalog.load(path, env={})
    with pytest.raises(UnknownModelError, match="ambiguous") as info:
        catalog.resolve("gemini-3.1-pro-preview")
    assert "google/gemini-3.1-pro-preview" in str(info.value)
    assert "mirror/gemini-3.1-pro-preview" in str(info.value)
    assert catalog.resolve("mirror/gemini-3.1-pro-preview").provider == "mirror"
    assert catalog.resolve("mirrored-pro").provider == "mirror"
    assert catalog.resolve("gemini-3.1-pro").provider == "google"


@pytest.mark.parametrize(
    ("name", "expected_key"),
    [
        # No alias declared: the shared id is as ambiguous as when an alias is declared.
        ("gemini-2.5-flash-lite", None),
        # 'gpt-4o-mini' is a declared alias of the built-in model; an id must not take it.
        ("gpt-4o-mini", "openai/gpt-4o-mini"),
    ],
)
def test_a_model_added_without_alias_does_not_silently_take_over_a_name(
    tmp_path, name, expected_key
):
    path = write(tmp_path, MIRROR.format(model_id=name, alias_line=""))
    catalog = Catalog.load(path, env={})
    if expected_key is None:
        with pytest.raises(UnknownModelError, match="ambiguous"):
            catalog.resolve(name)
    else:
        assert catalog.resolve(name).key == expected_key


# -- built-in contents ------------------------------------------------------------------------
def test_builtin_catalog_has_exactly_the_five_vendors(builtin):
    assert sorted(builtin.providers) == sorted(PROVIDERS)
    assert {m.provider for m in builtin.models} == set(PROVIDERS)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_provider_offers_a_strong_and_a_cheap_model(builtin, provider):
    models = [m for m in builtin.models if m.provider == provider]
    assert len(models) >= 2
    prices = {(m.price.input, m.price.output) for m in models}
    assert len(prices) >= 2
    cheapest = min(models, key=lambda m: m.price.input + m.price.output)
    dearest = max(models, key=lambda m: m.price.input + m.price.output)
    assert cheapest.price.input < dearest.price.input
    assert cheapest.price.output < dearest.price.output


@pytest.mark.parametrize("model", Catalog.load(env={}).models, ids=lambda m: m.key)
def test_every_model_records_its_date_source_and_limits(model: Model):
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", model.as_of)
    assert model.source.strip()
    assert model.context_window > 0
    assert 0 < model.max_output_tokens <= model.context_window
    assert model.price.input > 0
    assert model.price.output > 0
    assert 0 <= model.price.cached_input <= model.price.input
    assert model.value == model.id


def test_model_names_are_unique_across_the_catalog(builtin):
    for model in builtin.models:
        for name in (model.id, model.key, model.alias, *model.aliases):
            assert builtin.resolve(name) is model, name


@pytest.mark.parametrize(
    ("variable", "provider"),
    [
        ("OPENAI_API_KEY", "openai"),
        ("ANTHROPIC_API_KEY", "anthropic"),
        ("GOOGLE_API_KEY", "google"),
        ("GEMINI_API_KEY", "google"),
        ("KIMI_API_KEY", "kimi"),
        ("MOONSHOT_API_KEY", "kimi"),
        ("DEEPSEEK_API_KEY", "deepseek"),
    ],
)
def test_each_documented_key_variable_enables_its_provider(builtin, variable, provider):
    assert builtin.usable_providers({variable: "k"}) == [provider]


def test_no_provider_is_usable_without_keys_and_blank_keys_do_not_count(builtin):
    assert builtin.usable_providers({}) == []
    assert builtin.usable_providers({"OPENAI_API_KEY": "   ", "DEEPSEEK_API_KEY": ""}) == []


def test_vendor_base_url_variable_redirects_the_vendor(builtin):
    openai = builtin.providers["openai"]
    assert openai.base_url({}) == "https://api.openai.com/v1"
    assert openai.base_url({"OPENAI_BASE_URL": "http://proxy/v1"}) == "http://proxy/v1"


# -- prices -----------------------------------------------------------------------------------
OPUS_LIKE = Price(input=5.0, output=25.0, cached_input=0.5, cache_write=6.25)
MILLION = 1_000_000


def test_uncached_input_is_billed_at_the_input_price():
    assert OPUS_LIKE.cost(MILLION, 0) == pytest.approx(5.0)


def test_output_is_billed_at_the_output_price():
    assert OPUS_LIKE.cost(0, MILLION) == pytest.approx(25.0)


def test_cached_tokens_are_billed_at_the_cached_price():
    assert OPUS_LIKE.cost(MILLION, 0, cached_tokens=MILLION) == pytest.approx(0.5)
    # 600K plain at 5.00 + 400K cached at 0.50
    assert OPUS_LIKE.cost(MILLION, 0, cached_tokens=400_000) == pytest.approx(3.2)


def test_cache_writes_are_billed_at_the_cache_write_price():
    assert OPUS_LIKE.cost(MILLION, 0, cache_write_tokens=MILLION) == pytest.approx(6.25)


def test_a_mixed_call_adds_every_part():
    # 500K plain (2.50) + 1M cached (0.50) + 500K written (3.125) + 500K output (12.50)
    cost = OPUS_LIKE.cost(2 * MILLION, 500_000, cached_tokens=MILLION, cache_write_tokens=500_000)
    assert cost == pytest.approx(18.625)


def test_small_calls_cost_fractions_of_a_cent():
    assert OPUS_LIKE.cost(1_000, 500) == pytest.approx(0.005 + 0.0125)


def test_catalog_prices_are_the_ones_billed(builtin):
    opus = builtin.resolve("Claude Opus")
    assert opus.price == Price(input=5.0, output=25.0, cached_input=0.5, cache_write=6.25)
    assert opus.price.cost(MILLION, MILLION) == pytest.approx(30.0)


def test_without_a_cached_price_cached_tokens_cost_the_input_price(builtin):
    flash = builtin.resolve("gemini-2.5-flash")
    assert flash.price.cost(MILLION, 0, cached_tokens=MILLION) == pytest.approx(0.30)


# -- user override files ----------------------------------------------------------------------
def test_changing_only_a_price_keeps_every_other_field(tmp_path, builtin, load_user):
    path = write(
        tmp_path,
        """
        models:
          - id: gpt-4o
            provider: openai
            price: {input: 3.0}
        """,
    )
    catalog = load_user(path)
    before, after = builtin.resolve("gpt-4o"), catalog.resolve("GPT-4o")
    assert after.price.input == 3.0
    assert after.price.output == before.price.output
    assert after.price.cached_input == before.price.cached_input
    assert (after.alias, after.aliases) == (before.alias, before.aliases)
    assert after.context_window == before.context_window
    assert after.max_output_tokens == before.max_output_tokens
    assert (after.json_schema, after.vision) == (before.json_schema, before.vision)
    assert (after.as_of, after.source) == (before.as_of, before.source)
    assert len(catalog.models) == len(builtin.models)
    assert catalog.files == ["built-in catalog", str(path)]


def test_custom_openai_compatible_endpoint_is_usable_without_a_key(tmp_path, load_user):
    catalog = load_user(write(tmp_path, LOCAL_CATALOG))
    spec = catalog.providers["local"]
    assert spec.kind == "openai"
    assert spec.key_required is False
    assert catalog.usable_providers({}) == ["local"]
    model = catalog.resolve("llama-local")
    assert (model.id, model.provider) == ("llama3.1:8b", "local")
    assert model.price.cost(MILLION, MILLION) == 0.0
    # A fixed base_url is not redirected by any vendor's variable.
    assert spec.base_url({"OPENAI_BASE_URL": "http://elsewhere/v1"}) == "http://127.0.0.1:11434/v1"


def test_custom_endpoint_with_key_env_is_usable_only_with_that_variable(tmp_path, load_user):
    path = write(
        tmp_path,
        """
        providers:
          gateway:
            kind: openai
            base_url: https://gateway.example/v1
            key_env: [MY_KEY]
        models:
          - id: house-model
            provider: gateway
            price: {input: 1, output: 2}
            context_window: 32000
            max_output_tokens: 4000
        """,
    )
    catalog = load_user(path)
    assert "gateway" not in catalog.usable_providers({})
    assert "gateway" not in catalog.usable_providers({"MY_KEY": " "})
    assert "gateway" not in catalog.usable_providers({"OPENAI_API_KEY": "k"})
    assert catalog.usable_providers({"MY_KEY": "k"}) == ["gateway"]
    assert "MY_KEY" in catalog.key_variables()


def test_user_alias_takes_over_the_builtin_alias(tmp_path, load_user):
    path = write(
        tmp_path,
        LOCAL_CATALOG
        + """
      - id: kimi-proxy
        provider: local
        aliases: ["Kimi K2.5"]
        price: {input: 0, output: 0}
        context_window: 131072
        max_output_tokens: 4096
    """,
    )
    catalog = load_user(path)
    assert catalog.resolve("Kimi K2.5").key == "local/kimi-proxy"
    assert catalog.resolve("kimi k2.5").key == "local/kimi-proxy"
    # The built-in model keeps its other names.
    assert catalog.resolve("kimi-k2.6").key == "kimi/kimi-k2.6"
    assert catalog.resolve("kimi").key == "kimi/kimi-k2.6"
    assert "Kimi K2.5" not in catalog.resolve("kimi-k2.6").aliases


def test_explicit_catalog_path_wins_over_the_environment_variable(tmp_path):
    chosen = write(tmp_path, LOCAL_CATALOG, name="chosen.yaml")
    ignored = write(tmp_path, "models: [{id: nope, provider: nowhere}]\n", name="ignored.yaml")
    catalog = Catalog.load(chosen, env={"ORCHESTRATOR_CATALOG": str(ignored)})
    assert catalog.files == ["built-in catalog", str(chosen)]
    assert catalog.resolve("llama-local").provider == "local"


def test_empty_catalog_environment_variable_means_builtin_only():
    catalog = Catalog.load(env={"ORCHESTRATOR_CATALOG": ""})
    assert catalog.files == ["built-in catalog"]


def test_an_empty_user_file_changes_nothing(tmp_path, builtin, load_user):
    catalog = load_user(write(tmp_path, ""))
    assert [m.key for m in catalog.models] == [m.key for m in builtin.models]


# -- invalid user files -----------------------------------------------------------------------
NEW_MODEL = """
    models:
      - id: x
        provider: {provider}
        price: {price}
        context_window: {context_window}
        max_output_tokens: 100
"""


def new_model(provider="openai", price="{input: 1, output: 2}", context_window="1000") -> str:
    return NEW_MODEL.format(provider=provider, price=price, context_window=context_window)


INVALID_FILES = [
    pytest.param(
        new_model(price="{input: -1, output: 2}"),
        ["models[0] (x) field 'price.input'", "minimum"],
        id="negative-price",
    ),
    pytest.param(
        "models:\n  - {id: x, provider: openai, context_window: 10, max_output_tokens: 10}\n",
        ["models[0] (x)", "missing field 'price"],
        id="missing-price",
    ),
    pytest.param(
        new_model(provider="nowhere"),
        ["models[0] (x) field 'provider'", "'nowhere'"],
        id="unknown-provider",
    ),
    pytest.param("modles: []\n", ["'modles'"], id="unknown-top-level-key"),
    pytest.param(
        new_model(context_window="big"),
        ["models[0] (x) field 'context_window'", "integer"],
        id="context-window-not-an-integer",
    ),
    pytest.param(
        new_model().replace("context_window", "contex_window"),
        ["models[0] (x)", "'contex_window'"],
        id="misspelt-model-field",
    ),
    pytest.param("models:\n  - id: x\n   provider: [\n", ["YAML", "line 3"], id="bad-yaml"),
    pytest.param("- gpt-4o\n- claude-opus\n", ["mapping"], id="yaml-list"),
    pytest.param(
        """
        models:
          - {id: x, provider: openai, alias: same, price: {input: 1, output: 1},
             context_window: 10, max_output_tokens: 10}
          - {id: y, provider: openai, aliases: [Same], price: {input: 1, output: 1},
             context_window: 10, max_output_tokens: 10}
        """,
        ["models[1] (y)", "alias 'same'", "same file"],
        id="alias-used-twice",
    ),
    pytest.param(
        "providers:\n  local: {kind: ollama}\n",
        ["provider 'local' field 'kind'"],
        id="unknown-provider-kind",
    ),
    pytest.param(
        "providers:\n  local: {kind: openai}\n",
        ["provider 'local'", "base_url"],
        id="openai-kind-without-base-url",
    ),
    pytest.param(
        "providers:\n  local: {base_url: 'http://127.0.0.1:8000/v1'}\n",
        ["provider 'local'", "kind"],
        id="new-provider-without-kind",
    ),
    pytest.param(
        b"models:\n  - id: x\n    provider: openai\n    source: caf\xe9\n",
        [],
        id="not-utf-8",
    ),
]


def test_user_file_can_add_a_model_to_a_builtin_provider(tmp_path):
    # Also shows that the template the invalid files below are made from is valid as such.
    catalog = Catalog.load(write(tmp_path, new_model()), env={})
    assert catalog.resolve("openai/x").max_output_tokens == 100


@pytest.mark.parametrize(("text", "fragments"), INVALID_FILES)
def test_invalid_file_gives_one_line_error_naming_file_entry_and_field(
    tmp_path, load_user, text, fragments
):
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as info:
        load_user(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


PRICE_FIELDS = ("input", "output", "cached_input", "cache_write")
NOT_A_PRICE = {
    "nan": ".nan",
    "infinite": ".inf",
    "minus-infinite": "-.inf",
    "negative": "-0.5",
    "text": "'1.5'",
    "bool": "true",
}


@pytest.mark.parametrize("field", PRICE_FIELDS)
@pytest.mark.parametrize("value", NOT_A_PRICE.values(), ids=NOT_A_PRICE.keys())
def test_a_price_that_is_not_a_finite_number_of_at_least_zero_is_refused_at_load(
    tmp_path, load_user, field, value
):
    # A NaN or infinite price cannot be reserved against a budget: the run would fail after
    # spending; a negative one would make calls look free.
    path = write(tmp_path, new_model(price=f"{{input: 1, output: 2, {field}: {value}}}"))
    with pytest.raises(CatalogError) as info:
        load_user(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert f"models[0] (x) field 'price.{field}'" in message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, "1", True])
def test_a_price_given_in_code_is_held_to_the_same_rule(builtin, value):
    document = yaml.safe_load(new_model())
    document["models"][0]["price"]["output"] = value
    with pytest.raises(CatalogError, match=r"in code: models\[0\] \(x\) field 'price.output'"):
        builtin.extended("in code", document)


def test_a_client_given_the_file_refuses_it_too(tmp_path):
    path = write(tmp_path, new_model(price="{input: .nan, output: 2}"))
    with pytest.raises(CatalogError, match=r"models\[0\] \(x\) field 'price.input'"):
        UnifiedClient(catalog_path=path, env={})


def test_free_models_are_allowed(tmp_path, load_user):
    path = write(
        tmp_path, new_model(price="{input: 0, output: 0, cached_input: 0, cache_write: 0}")
    )
    assert load_user(path).resolve("openai/x").price == Price(0, 0, 0, 0)


def test_missing_file_is_named_in_the_error(tmp_path, load_user):
    path = tmp_path / "typo.yaml"
    with pytest.raises(CatalogError, match="no such file") as info:
        load_user(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


# -- environment ------------------------------------------------------------------------------
def test_dotenv_supplies_missing_variables_but_never_overrides_set_ones(tmp_path):
    dotenv = write(tmp_path, "OPENAI_API_KEY=from-file\nDEEPSEEK_API_KEY=from-file\n", ".env")
    env = load_environment({"OPENAI_API_KEY": "from-env"}, dotenv)
    assert env["OPENAI_API_KEY"] == "from-env"
    assert env["DEEPSEEK_API_KEY"] == "from-file"


def test_dotenv_never_overrides_or_modifies_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "from-process")
    dotenv = write(tmp_path, "OPENAI_API_KEY=from-file\nDEEPSEEK_API_KEY=from-file\n", ".env")
    before = dict(os.environ)
    env = load_environment(dotenv_path=dotenv)
    assert env["OPENAI_API_KEY"] == "from-process"
    assert env["DEEPSEEK_API_KEY"] == "from-file"
    assert dict(os.environ) == before


def test_dotenv_is_found_in_the_working_directory_or_above(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "sub" / "dir").mkdir(parents=True)
    write(project, "KIMI_API_KEY=from-file\n", ".env")
    monkeypatch.chdir(project / "sub" / "dir")
    assert load_environment({})["KIMI_API_KEY"] == "from-file"


def test_without_a_dotenv_file_only_the_given_variables_are_seen():
    assert load_environment({"A": "1"}) == {"A": "1"}


def test_home_dir_honours_the_environment_variable(isolated_home):
    assert home_dir() == isolated_home


def test_home_dir_argument_wins_over_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert home_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere"
    assert home_dir("~/state") == tmp_path / "state"


def test_home_dir_defaults_to_a_directory_in_the_user_home(tmp_path, monkeypatch):
    monkeypatch.delenv("ORCHESTRATOR_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert home_dir() == tmp_path / ".orchestrator_cache"


def test_the_built_in_catalog_matches_the_catalog_schema():
    # Not checked at start-up (it ships with the package): checked here instead.
    from orchestrator.llm.catalog import _builtin_text
    from orchestrator.text.schemas import shipped

    document = yaml.safe_load(_builtin_text())
    errors = [e.message for e in shipped("catalog.schema.json").iter_errors(document)]
    assert errors == []


def test_a_narrowed_catalog_stays_narrowed_when_extended():
    narrowed = Catalog.load(env={}).only(["openai"])

    extended = narrowed.extended("timeouts", {"providers": {"openai": {"timeout": 9.0}}})

    assert set(extended.providers) == {"openai"}
    assert extended.providers["openai"].timeout == 9.0
    assert {m.provider for m in extended.models} == {"openai"}
