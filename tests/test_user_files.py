"""Files a user names are read within bounds: size, nesting and YAML aliases, one line each."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from conftest import ALIAS_BOMB, DEEP_LIST, write_file

from orchestrator.errors import ConfigError
from orchestrator.user_files import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    PurePythonLoader,
    SafeLoader,
    load_json,
    load_yaml,
    read_user_file,
)

ORIGIN = "some file x.yaml"

# libyaml's loader where PyYAML has it, and the pure-Python one used where it has not.
LOADERS = pytest.mark.parametrize("loader", [SafeLoader, PurePythonLoader], ids=["c", "python"])


def refusal(text: str, loader: type = SafeLoader) -> str:
    with pytest.raises(ConfigError) as caught:
        load_yaml(text, ORIGIN, ConfigError, loader)
    message = str(caught.value)
    assert message.startswith(f"{ORIGIN}: ") and "\n" not in message
    return message


@LOADERS
def test_an_alias_bomb_is_refused_before_it_is_expanded(loader):
    message = refusal(f"project: p\nbomb: {ALIAS_BOMB}\n", loader)

    assert message == (
        f"{ORIGIN}: refused at line 2: more than 100000 values once its aliases are expanded"
    )


@LOADERS
def test_an_alias_inside_the_value_it_names_is_refused(loader):
    assert "refers to a value that contains it" in refusal("a: &a [1, *a]\n", loader)


@LOADERS
def test_nesting_past_the_bound_is_refused(loader):
    inside = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_yaml(inside, ORIGIN, ConfigError, loader) is not None

    message = refusal(f"a: {inside}\n", loader)
    assert message == f"{ORIGIN}: refused at line 1: nested more than {MAX_DEPTH} levels deep"


@LOADERS
def test_deep_nesting_through_aliases_counts_as_nesting(loader):
    levels = ["&l0 [x]"] + [f"&l{n} [*l{n - 1}]" for n in range(1, MAX_DEPTH + 1)]
    assert "nested more than" in refusal(f"[{', '.join(levels)}]\n", loader)


@LOADERS
def test_a_list_nested_50000_deep_is_one_line_not_a_recursion_error(loader):
    assert "nest" in refusal(f"a: {DEEP_LIST}\n", loader)


@LOADERS
def test_ordinary_aliases_and_merge_keys_still_load(loader):
    text = textwrap.dedent("""\
        defaults: &defaults {provider: openai, price: {input: 1, output: 2}}
        tags: &tags [fast, cheap]
        models:
          - {<<: *defaults, id: a, tags: *tags}
          - {<<: *defaults, id: b, price: {input: 3, output: 4}}
    """)

    assert load_yaml(text, ORIGIN, ConfigError, loader) == yaml.safe_load(text)


def test_a_syntax_error_still_names_the_line():
    assert refusal("a: [1, 2\nb: 3\n").startswith(f"{ORIGIN}: not valid YAML at line ")


def test_a_file_over_the_size_limit_is_refused_without_reading_it_all(tmp_path):
    largest = write_file(tmp_path / "largest.yaml", "#" * (MAX_FILE_BYTES - 1) + "\n")
    assert read_user_file(largest, "catalog file largest.yaml", ConfigError).startswith("#")

    too_big = write_file(tmp_path / "big.yaml", "#" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ConfigError) as caught:
        read_user_file(too_big, "catalog file big.yaml", ConfigError)
    assert str(caught.value) == "catalog file big.yaml: refused: larger than 1 MiB"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 50_000])
def test_json_nested_past_the_bound_is_refused(depth):
    text = "[" * depth + "]" * depth
    with pytest.raises(ConfigError) as caught:
        load_json(text, ORIGIN, ConfigError)
    assert str(caught.value) == f"{ORIGIN}: refused: nested more than {MAX_DEPTH} levels deep"


def test_json_within_the_bound_loads_and_errors_name_the_line():
    assert load_json('{"a": [[1], {"b": 2}]}', ORIGIN, ConfigError) == {"a": [[1], {"b": 2}]}
    with pytest.raises(ConfigError, match=r"^some file x.yaml: not valid JSON at line 2: "):
        load_json('{"a":\n }', ORIGIN, ConfigError)
