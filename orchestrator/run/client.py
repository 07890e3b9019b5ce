"""The client a run makes from its ``RunConfig``: the catalog's providers (only the config's
``providers`` when given), a local model served for the run's length where one is asked for,
was saved with the project, or stands in for missing keys, and the config's call timeout."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

from orchestrator.llm.catalog import Catalog
from orchestrator.llm.client import UnifiedClient
from orchestrator.llm.local import KEYLESS_NOTE, LOCAL_PROVIDER, LocalModel, choose_local, saved_as
from orchestrator.run.config import RunConfig


@asynccontextmanager
async def run_client(
    config: RunConfig,
    env: Mapping[str, str],
    *,
    running: bool = True,
    note: Callable[[str], None],
) -> AsyncIterator[tuple[UnifiedClient, RunConfig]]:
    """The client of a run on ``config`` (resolved), open until the block ends, and ``config``
    with the models chosen (the local model, the providers) as a resume must find them.
    ``running``: False when nothing will be asked (a project saved for later, or a finished
    one), so no local model is started. ``note`` is told when the local model stands in."""
    catalog, providers, local, stands_in = run_models(config, env, running=running)
    async with AsyncExitStack() as stack:
        if local is not None:
            await stack.enter_async_context(local)
            catalog = local.catalog(catalog)
            if stands_in:
                note(KEYLESS_NOTE)
            providers = providers or (LOCAL_PROVIDER,)
        if providers:
            catalog = catalog.only(list(providers))
        if config.call_timeout:
            every = {name: {"timeout": config.call_timeout} for name in catalog.providers}
            catalog = catalog.extended("--call-timeout", {"providers": every})
        # Saved as chosen, so that a resume starts the same local model (or, saved for later,
        # the one asked for).
        kept = saved_as(local) if local is not None else config.local
        chosen = dataclasses.replace(config, local=kept, providers=providers)
        client = UnifiedClient(catalog=catalog, env=env, max_concurrency=config.concurrency or 1)
        yield await stack.enter_async_context(client), chosen


def run_models(
    config: RunConfig, env: Mapping[str, str], *, running: bool
) -> tuple[Catalog, tuple[str, ...] | None, LocalModel | None, bool]:
    """The catalog, the providers a run is limited to (None: all), the local model it serves
    (not started) and whether that stands in for missing keys."""
    catalog = Catalog.load(config.catalog, env=env)
    providers = config.providers
    requested = config.local
    if providers and LOCAL_PROVIDER in providers and LOCAL_PROVIDER not in catalog.providers:
        requested = requested or True  # the embedded model, unless the catalog has a "local"
    elif providers and requested:
        providers = (*providers, LOCAL_PROVIDER)  # a local model beside named cloud providers
    others = [p for p in providers or () if p != LOCAL_PROVIDER or p in catalog.providers]
    cloud = catalog.only(others) if providers else catalog
    local, stands_in = choose_local(
        requested if running else None, keys_usable=bool(cloud.usable_providers(env))
    )
    return catalog, providers, local, stands_in
