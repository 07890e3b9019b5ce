"""Policy files (YAML or JSON) and the static analysis that runs before any spend.

A file has up to three sections: ``global`` (a list of policies for the whole organisation),
``team`` and ``job`` (each a mapping of name to a list of policies); every policy has a ``name``
and any fields of ``routing.policy.Policy``. ``PolicyAnalyzer.analyze`` reports what makes
a set of policies contradictory (errors), likely unsatisfiable together (warnings) or
incomplete (info).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.routing.policy import Policy, PolicyHierarchy
from orchestrator.run.taskgraph import explain_schema_error
from orchestrator.text.schemas import best_match, shipped
from orchestrator.user_files import load_json, load_yaml, read_user_file


class PolicyError(ConfigError):
    """A policy file that cannot be read or does not say what a policy file must."""


def load_policy_file(path: str | Path) -> PolicyHierarchy:
    """The hierarchy a policy file describes; ``PolicyError`` names the file and the entry."""
    file = Path(path)
    origin = f"policy file {file}"
    text = read_user_file(file, origin, PolicyError)
    load = load_json if file.suffix.lower() == ".json" else load_yaml
    document = load(text, origin, PolicyError)
    document = {} if document is None else document
    error = best_match(shipped("policy.schema.json").iter_errors(document))
    if error is not None:
        raise PolicyError(f"{origin}: {_where(document, list(error.absolute_path))}: "
                          f"{explain_schema_error(error)}")  # fmt: skip
    return PolicyHierarchy(
        org=_policies(document.get("global") or []),
        team={name: _policies(items) for name, items in (document.get("team") or {}).items()},
        job={name: _policies(items) for name, items in (document.get("job") or {}).items()},
    )


def _policies(entries: list[dict[str, Any]]) -> list[Policy]:
    return [Policy(**entry) for entry in entries]


def _where(document: Any, path: list[Any]) -> str:
    """``team.eng[0] (eu_only)``: the entry an error is in, by section, index and name."""
    parts: list[str] = []
    node = document
    for step in path:
        if isinstance(step, int):
            parts[-1] = f"{parts[-1]}[{step}]" if parts else f"[{step}]"
            node = node[step] if isinstance(node, list) and step < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                parts[-1] += f" ({node['name']})"
        else:
            parts.append(str(step))
            node = node.get(step) if isinstance(node, dict) else None
    return ".".join(parts) or "top level"


@dataclass
class AnalysisReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)

    def is_clean(self) -> bool:
        """No errors and no warnings (information is only that)."""
        return not self.errors and not self.warnings


class PolicyAnalyzer:
    @staticmethod
    def analyze(policies: Iterable[Policy]) -> AnalysisReport:
        """Errors: a provider or model both allowed and blocked, an empty list of allowed
        regions; warnings: policies whose allowed providers share none (no model can satisfy
        both); info: no cost cap, no latency SLA."""
        policies = list(policies)
        report = AnalysisReport()
        for p in policies:
            for kind in ("providers", "models"):
                allowed = getattr(p, f"allowed_{kind}")
                both = sorted(set(allowed or ()) & set(getattr(p, f"blocked_{kind}")))
                if both:
                    report.errors.append(
                        f"policy {p.name}: {kind} both allowed and blocked: {', '.join(both)}"
                    )
            if p.allowed_regions is not None and not p.allowed_regions:
                report.errors.append(f"policy {p.name}: allowed_regions is empty: no model fits")
        restricted = [p for p in policies if p.allowed_providers is not None]
        for i, first in enumerate(restricted):
            for second in restricted[i + 1 :]:
                assert first.allowed_providers is not None and second.allowed_providers is not None
                if not set(first.allowed_providers) & set(second.allowed_providers):
                    report.warnings.append(
                        f"policies {first.name} and {second.name} allow no provider in common"
                    )
        if not any(p.max_cost_per_task_usd is not None for p in policies):
            report.info.append("no policy caps the cost of a task (max_cost_per_task_usd)")
        if not any(p.max_latency_ms is not None for p in policies):
            report.info.append("no policy sets a latency SLA (max_latency_ms)")
        return report
