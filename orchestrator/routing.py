"""Which model does what: the design routing table, resolved to the models usable now."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .catalog import Catalog, Model
from .errors import UnknownModelError
from .models import TaskType

# The design document's priority lists, by the names it uses; the catalog maps each name to a
# current model id, and a user catalog file can re-point any of them.
ROUTING_TABLE: dict[TaskType, tuple[tuple[str, ...], int]] = {
    TaskType.CODE_GEN: (("Kimi K2.5", "Claude Sonnet", "GPT-4o", "Gemini 2.5 Pro"), 4096),
    TaskType.CODE_REVIEW: (("Kimi K2.5", "GPT-4o", "Claude Opus", "Gemini 2.5 Pro"), 2048),
    TaskType.REASONING: (("Kimi K2.5", "Claude Opus", "GPT-4o", "Gemini 2.5 Pro"), 2048),
    TaskType.WRITING: (("Claude Opus", "GPT-4o", "Gemini 2.5 Pro"), 2048),
    TaskType.DATA_EXTRACT: (("Gemini 2.5 Flash", "GPT-4o-mini", "Claude Haiku"), 1024),
    TaskType.SUMMARIZE: (("Gemini 2.5 Flash", "Claude Haiku", "GPT-4o-mini"), 512),
    TaskType.EVALUATE: (("Kimi K2.5", "Claude Opus", "GPT-4o", "Gemini 2.5 Pro"), 600),
}

DECOMPOSITION_MAX_TOKENS = 4096
CRITIQUE_MAX_TOKENS = 1024


@dataclass(frozen=True)
class Router:
    """Model chains for each role, over the models usable now and healthy.

    ``usable`` lists the models whose provider has a key; ``healthy`` says whether a model's
    circuit breaker lets calls through at this moment.
    """

    catalog: Catalog
    usable: tuple[Model, ...]
    healthy: Callable[[Model], bool] = lambda model: True

    def max_tokens(self, task_type: TaskType) -> int:
        return ROUTING_TABLE[task_type][1]

    def generation_chain(self, task_type: TaskType) -> list[Model]:
        """The priority list, then every other usable model from cheapest up, healthy first."""
        return self._ordered(self._preferred(task_type))

    def reviewer_chain(self, task_type: TaskType, author: Model) -> list[Model]:
        """Critics: another provider first, then another model, then the author as a last resort."""
        role = TaskType.CODE_REVIEW if task_type is TaskType.CODE_GEN else task_type
        return _away_from(author, self._ordered(self._preferred(role)))

    def evaluator_chain(self, author: Model) -> list[Model]:
        return _away_from(author, self._ordered(self._preferred(TaskType.EVALUATE)))

    def first_calls(self, task_types: Iterable[TaskType]) -> list[Model]:
        """The models a task of each of ``task_types`` asks first: author, critic, evaluator."""
        calls: list[Model] = []
        for task_type in task_types:
            chain = self.generation_chain(task_type)
            if chain:
                author = chain[0]
                calls += [author, *self.reviewer_chain(task_type, author)[:1]]
                calls += self.evaluator_chain(author)[:1]
        return calls

    def decomposition_chain(self) -> list[Model]:
        """The cheapest usable models first."""
        return self._ordered([])

    def _preferred(self, task_type: TaskType) -> list[Model]:
        names, _ = ROUTING_TABLE[task_type]
        preferred: list[Model] = []
        for name in names:
            try:
                model = self.catalog.resolve(name)
            except UnknownModelError:
                continue  # a user catalog may have dropped or renamed a design name
            if model in self.usable and model not in preferred:
                preferred.append(model)
        return preferred

    def _ordered(self, preferred: list[Model]) -> list[Model]:
        rest = sorted(
            (m for m in self.usable if m not in preferred),
            key=lambda m: (m.price.input + m.price.output, m.price.output),
        )
        chain = preferred + rest
        # Healthy models first; unhealthy ones stay at the back in case they recover mid-run.
        return [m for m in chain if self.healthy(m)] + [m for m in chain if not self.healthy(m)]


def _away_from(author: Model, chain: Iterable[Model]) -> list[Model]:
    models = list(chain)
    other_provider = [m for m in models if m.provider != author.provider]
    other_model = [m for m in models if m.provider == author.provider and m != author]
    same = [m for m in models if m == author]
    return other_provider + other_model + same
