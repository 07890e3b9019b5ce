"""The ``orchestrator`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

from .catalog import Catalog
from .errors import OrchestratorError
from .settings import CATALOG_ENV, load_environment

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Route project tasks across several LLM vendors under a hard budget.",
    )
    parser.add_argument(
        "--list-models",
        action="store_true",
        help="print the model catalog with prices and which providers are usable now",
    )
    parser.add_argument(
        "--catalog",
        metavar="PATH",
        help=f"YAML file extending or overriding the built-in model catalog (or ${CATALOG_ENV})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list_models:
            env = load_environment()
            catalog = Catalog.load(args.catalog, env=env)
            sys.stdout.write(format_catalog(catalog, env))
            return 0
        parser.print_usage(sys.stderr)
        print("orchestrator: error: nothing to do; see --help", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OrchestratorError as exc:
        print(f"orchestrator: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("orchestrator: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def format_catalog(catalog: Catalog, env: Mapping[str, str]) -> str:
    """The catalog as a table, prices in USD per 1M tokens, and which providers have a key."""
    header = ("alias", "model id", "provider", "in", "out", "cached", "context", "json", "usable")
    rows = [header]
    for m in catalog.models:
        rows.append(
            (
                m.alias,
                m.id,
                m.provider,
                _price(m.price.input),
                _price(m.price.output),
                _price(m.price.cached_input),
                f"{m.context_window:,}",
                "schema" if m.json_schema else "mode",
                "yes" if catalog.providers[m.provider].usable(env) else "no",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {3, 4, 5, 6}
    lines = [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("Prices: USD per 1M tokens. json: native JSON-schema output, or JSON mode.")
    for name, spec in catalog.providers.items():
        if spec.usable(env):
            state = f"usable ({spec.base_url(env)})"
        else:
            state = "no key: set " + " or ".join(spec.key_env)
        lines.append(f"{name:<10} {state}")
    return "\n".join(lines) + "\n"


def _price(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"
