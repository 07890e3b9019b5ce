"""The model catalog: models, prices and provider endpoints, loaded from YAML data files.

The built-in catalog ships as ``orchestrator/data/catalog.yaml``. A user file (argument or
``$ORCHESTRATOR_CATALOG``) is merged over it: an entry with the same provider and id updates the
built-in one field by field, anything else is added. Aliases named by a later file win.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import CatalogError, UnknownModelError
from orchestrator.money.units import nanos_to_usd, price_to_nanos, usage_nanos
from orchestrator.text.schemas import best_match, shipped

if TYPE_CHECKING:
    from jsonschema import ValidationError
from orchestrator.settings import CATALOG_ENV, first_set
from orchestrator.user_files import load_yaml, read_user_file

DEFAULT_QUALITY = 0.7  # for a model whose catalog entry gives no prior
_MODEL_FIELDS_REQUIRED = ("price", "context_window", "max_output_tokens")
_PROVIDER_FIELDS_REQUIRED = ("kind",)


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens, as the catalog gives them; billed in integer nano-dollars per 1M
    tokens, converted once when the price is made (rounded up past 9 decimals)."""

    input: float
    output: float
    cached_input: float
    cache_write: float
    _nanos: tuple[int, int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rates = (self.input, self.output, self.cached_input, self.cache_write)
        object.__setattr__(self, "_nanos", tuple(price_to_nanos(rate) for rate in rates))

    @property
    def free(self) -> bool:
        """Nothing to pay for prompt or answer (a local model)."""
        return self.input == 0 and self.output == 0

    def cost_nanos(
        self,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> int:
        """Cost in nano-dollars, rounded up once over every part; ``input_tokens`` counts every
        prompt token, cached and cache-written ones included (billed at their own prices)."""
        plain = max(0, input_tokens - cached_tokens - cache_write_tokens)
        input_nanos, output_nanos, cached_nanos, write_nanos = self._nanos
        return usage_nanos(
            [
                (plain, input_nanos),
                (cached_tokens, cached_nanos),
                (cache_write_tokens, write_nanos),
                (output_tokens, output_nanos),
            ]
        )

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float:
        """``cost_nanos`` in USD, for a person to read."""
        return nanos_to_usd(
            self.cost_nanos(input_tokens, output_tokens, cached_tokens, cache_write_tokens)
        )


class _NamedModels(type):
    """``Model.KIMI_K2_5``, ``Model.GPT_4O``: the design document's constants, looked up in the
    built-in catalog by name (letters and digits compared, so KIMI_K2_5 finds "Kimi K2.5")."""

    def __getattr__(cls, name: str) -> Model:
        if not name.isupper():
            raise AttributeError(name)
        wanted = _squashed(name)
        catalog = _builtin_catalog()
        for key, models in catalog._lookup.items():
            if _squashed(key) == wanted and len(models) == 1:
                return models[0]
        raise AttributeError(f"no model in the built-in catalog is called {name}")


def _squashed(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


@dataclass(frozen=True)
class Model(metaclass=_NamedModels):
    """One catalog entry. ``value`` is the id the vendor's API expects.

    ``alias`` is the short display name (the id when none is declared); ``aliases`` holds every
    declared name, ``alias`` included.
    """

    id: str
    provider: str
    alias: str
    price: Price
    context_window: int
    max_output_tokens: int
    json_schema: bool = False
    vision: bool = False
    aliases: tuple[str, ...] = ()
    as_of: str = ""
    source: str = ""
    # A prior for quality-aware routing (0 to 1); evaluations during runs replace it.
    quality: float = DEFAULT_QUALITY

    @property
    def value(self) -> str:
        return self.id

    @cached_property
    def key(self) -> str:
        """Unique across providers: ``provider/id`` (made once: routing reads it often)."""
        return f"{self.provider}/{self.id}"

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class ProviderSpec:
    """How to reach one vendor or endpoint and which variables configure it."""

    name: str
    kind: str
    key_env: tuple[str, ...] = ()
    key_required: bool = True
    base_url_env: tuple[str, ...] = ()
    default_base_url: str | None = None
    api_version: str | None = None
    # What policies check: where requests are processed by default, and whether the vendor's
    # default terms let it train on them ("unknown" and None mean the catalog does not say).
    region: str = "unknown"
    trains_on_output: bool | None = None
    terms: str = ""
    # What answers, for cache and journal keys, where the URL changes from run to run (the
    # embedded local server's port); None: the base URL says it.
    identity: str | None = None
    # Seconds one attempt may take (a slow local model needs more than a cloud vendor); None:
    # the client's default.
    timeout: float | None = None
    # Answers are streamed (any wire format): ``timeout`` then bounds the wait for
    # each piece, so a slow but steady model is never cut off and paid again.
    stream: bool = False

    def api_key(self, env: Mapping[str, str]) -> str | None:
        """The key from the environment; endpoints that need none get a placeholder."""
        key = first_set(env, list(self.key_env))
        if key is None and not self.key_required:
            return "not-needed"
        return key

    def base_url(self, env: Mapping[str, str]) -> str | None:
        return first_set(env, list(self.base_url_env)) or self.default_base_url

    def usable(self, env: Mapping[str, str]) -> bool:
        return self.api_key(env) is not None


@dataclass
class Catalog:
    providers: dict[str, ProviderSpec]
    models: list[Model]
    files: list[str] = field(default_factory=list)
    _lookup: dict[str, list[Model]] = field(default_factory=dict, repr=False)
    _documents: list[tuple[str, dict[str, Any]]] = field(default_factory=list, repr=False)
    _only: frozenset[str] | None = field(default=None, repr=False)  # set by ``only``

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> Catalog:
        """The built-in catalog merged with ``path`` (or ``$ORCHESTRATOR_CATALOG`` when unset)."""
        environ = os.environ if env is None else env
        user_path = path if path is not None else (environ.get(CATALOG_ENV) or None)
        documents = [("built-in catalog", _builtin_document())]
        if user_path is not None:
            documents.append((str(user_path), _read_document(Path(user_path))))
        return _build(documents)

    def extended(self, origin: str, document: dict[str, Any]) -> Catalog:
        """This catalog with ``document`` (same shape as a catalog file) merged over it; a
        catalog narrowed by ``only`` stays narrowed to its providers and the document's."""
        built = _build([*self._documents, (origin, document)])
        if self._only is None:
            return built
        return built.only(self._only | set(document.get("providers") or ()))

    def only(self, providers: Iterable[str]) -> Catalog:
        """This catalog with just ``providers`` and their models (``--providers``)."""
        names = {name.strip().lower() for name in providers}
        unknown = sorted(names - set(self.providers))
        if unknown:
            known = ", ".join(sorted(self.providers))
            raise CatalogError(f"unknown provider {unknown[0]!r}: the catalog has {known}")
        kept = [m for m in self.models if m.provider in names]
        catalog = Catalog(
            providers={n: spec for n, spec in self.providers.items() if n in names},
            models=kept,
            files=list(self.files),
            _documents=list(self._documents),
            _only=frozenset(names),
        )
        catalog._lookup = _index(kept)
        return catalog

    def resolve(self, name: str | Model) -> Model:
        """A model by alias, id or ``provider/id`` (case-insensitive)."""
        if isinstance(name, Model):
            return name
        matches = self._lookup.get(name.strip().lower(), [])
        if len(matches) == 1:
            return matches[0]
        if matches:
            keys = ", ".join(m.key for m in matches)
            raise UnknownModelError(f"model name {name!r} is ambiguous: use one of {keys}")
        raise UnknownModelError(
            f"unknown model {name!r}: run 'python -m orchestrator --list-models' to see the catalog"
        )

    def provider_of(self, model: Model) -> ProviderSpec:
        return self.providers[model.provider]

    def usable_providers(self, env: Mapping[str, str]) -> list[str]:
        return [name for name, spec in self.providers.items() if spec.usable(env)]

    def key_variables(self) -> list[str]:
        """Every variable that can enable a provider, for error messages and docs."""
        names: list[str] = []
        for spec in self.providers.values():
            names.extend(n for n in spec.key_env if n not in names)
        return names


@cache
def _builtin_catalog() -> Catalog:
    return _build([("built-in catalog", _builtin_document())])


@cache
def _builtin_text() -> str:
    from importlib import resources

    return resources.files("orchestrator").joinpath("data/catalog.yaml").read_text()


def _builtin_document() -> dict[str, Any]:
    # Shipped data, checked against the schema by the tests rather than at every start.
    return _parse(_builtin_text(), "built-in catalog", check=False)


def _read_document(path: Path) -> dict[str, Any]:
    return _parse(read_user_file(path, f"catalog file {path}", CatalogError), str(path))


def _parse(text: str, origin: str, *, check: bool = True) -> dict[str, Any]:
    document = load_yaml(text, f"catalog file {origin}", CatalogError)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise CatalogError(f"catalog file {origin}: expected a mapping with 'providers' / 'models'")
    _dates_as_text(document)
    error = best_match(shipped("catalog.schema.json").iter_errors(document)) if check else None
    if error is not None:
        raise CatalogError(f"catalog file {origin}: {_describe(document, error)}")
    return document


def _dates_as_text(document: dict[str, Any]) -> None:
    # YAML reads an unquoted 2026-11-25 as a date; the catalog keeps dates as ISO text.
    entries = [document, *(m for m in document.get("models") or [] if isinstance(m, dict))]
    for entry in entries:
        if isinstance(entry.get("as_of"), date):
            entry["as_of"] = entry["as_of"].isoformat()


def _describe(document: dict[str, Any], error: ValidationError) -> str:
    path = list(error.absolute_path)
    where = "top level"
    if len(path) >= 2 and path[0] == "models" and isinstance(path[1], int):
        entry = document["models"][path[1]]
        name = entry.get("id", "?") if isinstance(entry, dict) else "?"
        rest = ".".join(str(p) for p in path[2:])
        where = f"models[{path[1]}] ({name})" + (f" field '{rest}'" if rest else "")
    elif len(path) >= 2 and path[0] == "providers":
        rest = ".".join(str(p) for p in path[2:])
        where = f"provider '{path[1]}'" + (f" field '{rest}'" if rest else "")
    elif path:
        where = f"field '{'.'.join(str(p) for p in path)}'"
    return f"{where}: {error.message}"


def _build(documents: Sequence[tuple[str, dict[str, Any]]]) -> Catalog:
    providers: dict[str, dict[str, Any]] = {}
    provider_origin: dict[str, str] = {}
    models: dict[tuple[str, str], dict[str, Any]] = {}
    origin_of: dict[tuple[str, str], str] = {}
    alias_owner: dict[str, tuple[str, str]] = {}
    files: list[str] = []
    for origin, document in documents:
        files.append(origin)
        for name, fields in (document.get("providers") or {}).items():
            providers.setdefault(name, {}).update(fields)
            provider_origin[name] = f"catalog file {origin}: provider '{name}'"
        claimed_here: dict[str, tuple[str, str]] = {}
        for index, entry in enumerate(document.get("models") or []):
            key = (entry["provider"], entry["id"])
            merged = models.setdefault(key, {})
            price = {**merged.get("price", {}), **entry.get("price", {})}
            caps = {**merged.get("capabilities", {}), **entry.get("capabilities", {})}
            merged.update(entry, price=price, capabilities=caps)
            origin_of[key] = f"catalog file {origin}: models[{index}] ({entry['id']})"
            _check_prices(entry.get("price", {}), origin_of[key])
            for alias in _names(entry):
                previous = claimed_here.get(alias)
                if previous is not None and previous != key:
                    raise CatalogError(
                        f"{origin_of[key]}: alias {alias!r} is also used by {previous[1]} "
                        "in the same file"
                    )
                claimed_here[alias] = key
                alias_owner[alias] = key
    specs = {
        name: _provider_spec(name, fields, provider_origin[name])
        for name, fields in providers.items()
    }
    built = [
        _model(fields, origin_of[key], specs, alias_owner, key) for key, fields in models.items()
    ]
    catalog = Catalog(providers=specs, models=built, files=files, _documents=list(documents))
    catalog._lookup = _index(built)
    return catalog


def _check_prices(price: Mapping[str, Any], origin: str) -> None:
    """Each price given is a finite number >= 0: a NaN or infinite price cannot be reserved
    against a budget, and a negative one would pay for calls out of thin air. The schema
    refuses negatives and non-numbers in user files; YAML's .nan and .inf pass it, and the
    built-in and programmatic documents are not checked against it."""
    for name, value in price.items():
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (is_number and math.isfinite(value) and value >= 0):
            raise CatalogError(
                f"{origin} field 'price.{name}': must be a finite number >= 0 "
                f"(USD per 1M tokens), not {value!r}"
            )


def _names(entry: Mapping[str, Any]) -> list[str]:
    names = [entry["alias"]] if entry.get("alias") else []
    return [n.strip().lower() for n in names + list(entry.get("aliases") or [])]


def _provider_spec(name: str, fields: dict[str, Any], origin: str) -> ProviderSpec:
    missing = [f for f in _PROVIDER_FIELDS_REQUIRED if f not in fields]
    if missing:
        raise CatalogError(f"{origin}: missing field '{missing[0]}'")
    base_url = fields.get("base_url") or fields.get("default_base_url")
    if not base_url and fields["kind"] == "openai":
        raise CatalogError(f"{origin}: needs 'base_url' for an OpenAI-compatible endpoint")
    key_env = tuple(fields.get("key_env") or ())
    return ProviderSpec(
        name=name,
        kind=fields["kind"],
        key_env=key_env,
        key_required=fields.get("key_required", bool(key_env)),
        # A fixed base_url on a custom endpoint is not overridable by an environment variable.
        base_url_env=() if fields.get("base_url") else tuple(fields.get("base_url_env") or ()),
        default_base_url=base_url,
        api_version=fields.get("api_version"),
        region=str(fields.get("region", "unknown")).lower(),
        trains_on_output=fields.get("trains_on_output"),
        terms=" ".join(str(fields.get(k, "")) for k in ("terms", "terms_as_of")).strip(),
        identity=fields.get("identity"),
        timeout=float(fields["timeout"]) if fields.get("timeout") is not None else None,
        stream=bool(fields.get("stream", False)),
    )


def _model(
    fields: dict[str, Any],
    origin: str,
    providers: dict[str, ProviderSpec],
    alias_owner: dict[str, tuple[str, str]],
    key: tuple[str, str],
) -> Model:
    if fields["provider"] not in providers:
        raise CatalogError(f"{origin} field 'provider': unknown provider {fields['provider']!r}")
    for name in _MODEL_FIELDS_REQUIRED:
        if name not in fields:
            raise CatalogError(f"{origin}: missing field '{name}'")
    price = fields["price"]
    for name in ("input", "output"):
        if name not in price:
            raise CatalogError(f"{origin}: missing field 'price.{name}'")
    caps = fields.get("capabilities", {})
    own = {alias for alias, owner in alias_owner.items() if owner == key}
    declared = [fields["alias"]] if fields.get("alias") else []
    declared += list(fields.get("aliases") or [])
    kept = [a for a in declared if a.strip().lower() in own]
    return Model(
        id=fields["id"],
        provider=fields["provider"],
        alias=kept[0] if kept else fields["id"],
        aliases=tuple(kept),
        price=Price(
            input=float(price["input"]),
            output=float(price["output"]),
            cached_input=float(price.get("cached_input", price["input"])),
            cache_write=float(price.get("cache_write", price["input"])),
        ),
        context_window=int(fields["context_window"]),
        max_output_tokens=int(fields["max_output_tokens"]),
        json_schema=bool(caps.get("json_schema", False)),
        vision=bool(caps.get("vision", False)),
        as_of=str(fields.get("as_of", "")),
        source=str(fields.get("source", "")),
        quality=float(fields.get("quality", DEFAULT_QUALITY)),
    )


def _index(models: list[Model]) -> dict[str, list[Model]]:
    lookup: dict[str, list[Model]] = {}

    def add(name: str, model: Model) -> None:
        bucket = lookup.setdefault(name.lower(), [])
        if model not in bucket:
            bucket.append(model)

    for model in models:
        add(model.key, model)
        add(model.id, model)
    # Declared aliases are exact: they never become ambiguous with ids, so they are added last.
    for model in models:
        for alias in model.aliases:
            lookup[alias.lower()] = [model]
    return lookup
