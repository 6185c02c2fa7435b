"""The router's compiled configuration, swapped atomically on reload.

A request takes `holder.current` once and keeps that object to its end, so a reload never
changes the rules under an in-flight request; new requests see the new state at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

from modelflock.retrieval.store import CREDENTIAL_KEYS
from modelflock.router.checks import CompiledChecks, compile_checks
from modelflock.router.classify.build import ClassifierMemory, build_chain
from modelflock.router.classify.chain import ClassifierChain
from modelflock.router.classify.embedding import EmbeddingStage
from modelflock.router.config import RouterConfig, load_config
from modelflock.router.upstream import ExpertRuntime, Upstream, upstream_headers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterState:
    config: RouterConfig
    experts: dict[str, ExpertRuntime]
    chain: ClassifierChain
    checks: dict[str, CompiledChecks]  # by route name, for cascades
    routed_models: frozenset[str]  # model names that mean "classify and route"
    embedding_expert: str | None
    baseline: ExpertRuntime | None
    fingerprint: str
    # SHA-256 of each client key -> its name; None: no client authentication.
    client_keys: dict[bytes, str] | None = None


@dataclass(frozen=True)
class Secrets:
    """What the mounted Secret files hold: expert API keys by expert, client key digests."""

    expert_keys: dict[str, str]
    client_keys: dict[bytes, str] | None = None


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def watched_files(config_path: Path, config: RouterConfig | None) -> list[Path]:
    files = [config_path]
    if config is not None:
        files += [e.api_key_file for e in config.experts if e.api_key_file]
        if config.auth:
            files += [k.file for k in config.auth.keys]
        if config.discovery:
            files.append(config.discovery.token_file)
        for kb in config.knowledge_bases:
            files += [kb.secret_dir / key for key in CREDENTIAL_KEYS]
    return files


def fingerprint(files: list[Path]) -> str:
    """Content hash of the config and the secret files it names (rotation triggers reload)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path).encode())
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def read_keys(config: RouterConfig) -> Secrets:
    """API keys of external experts and the client keys, from their mounted Secret files
    (blocking: use a thread). An empty client key is refused (it would match a bare
    `Bearer `)."""
    experts = {e.name: e.api_key_file.read_text().strip() for e in config.experts if e.api_key_file}
    if config.auth is None:
        return Secrets(experts)
    clients = {}
    for key in config.auth.keys:
        value = key.file.read_text().strip()
        if not value:
            raise ValueError(f"auth key {key.name}: {key.file} is empty")
        clients[key_digest(value)] = key.name
    return Secrets(experts, clients)


def load_files(path: Path) -> tuple[RouterConfig, Secrets, str]:
    """Everything read from disk for one state (blocking: run it in a thread)."""
    config = load_config(path)
    return config, read_keys(config), fingerprint(watched_files(path, config))


def _experts(config: RouterConfig, keys: Secrets) -> dict[str, ExpertRuntime]:
    return {
        e.name: ExpertRuntime(
            config=e,
            headers=upstream_headers(keys.expert_keys.get(e.name)),
            input_price=float(Decimal(e.prices.input_per_million) / 1_000_000),
            output_price=float(Decimal(e.prices.output_per_million) / 1_000_000),
        )
        for e in config.experts
    }


def build_state(
    config: RouterConfig,
    keys: Secrets,
    upstream: Upstream,
    fingerprint_: str,
    memory: ClassifierMemory | None = None,
) -> RouterState:
    experts = _experts(config, keys)
    routed = set(config.models)
    for route in config.routes:
        routed.update(route.match.models)
    for intent in config.classifier.intents:
        routed.update(intent.models)
    embedders = [e.name for e in config.experts if "embed" in e.capabilities]
    embedders += [str(s.expert) for s in config.classifier.stages if s.type == "embedding"]
    return RouterState(
        config=config,
        experts=experts,
        chain=build_chain(config, experts, upstream, memory or ClassifierMemory()),
        checks={r.name: compile_checks(r.cascade) for r in config.routes if r.cascade},
        routed_models=frozenset(routed),
        embedding_expert=embedders[0] if embedders else None,
        baseline=experts[config.baseline] if config.baseline else None,
        fingerprint=fingerprint_,
        client_keys=keys.client_keys,
    )


_RETRY_FIRST_SECONDS, _RETRY_MAX_SECONDS = 1.0, 30.0


ReadyFn = Callable[[str, int], None]  # (stage, example vectors ready)


async def _prepare(
    stage: EmbeddingStage, chain: ClassifierChain, memory: ClassifierMemory, on_ready: ReadyFn
) -> None:
    """Embed the examples until it works (the embedding expert may be down or cold); the
    stage answers `warming` meanwhile and never holds a request."""
    delay = _RETRY_FIRST_SECONDS
    while True:
        try:
            index = await stage.prepare()
        except Exception as exc:
            log.warning("embedding the intent examples failed, retrying in %gs: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_SECONDS)
            continue
        memory.remember(chain)
        on_ready(stage.name, len(stage.vectors))
        if index is not None:
            c = index.calibration
            log.info(
                "intent examples embedded: %d examples, held-out accuracy %.3f, temperature %.4f%s",
                c.examples,
                c.held_out_accuracy,
                c.temperature,
                "" if c.calibrated else " (too few examples to calibrate)",
            )
        return


def warm_up(
    state: RouterState, memory: ClassifierMemory, on_ready: ReadyFn
) -> list[asyncio.Task[None]]:
    """Compute the embedding stage's example vectors in the background, not on a request."""
    loop = asyncio.get_running_loop()
    tasks = []
    for stage in state.chain.stages:
        if isinstance(stage, EmbeddingStage):
            on_ready(stage.name, len(stage.vectors) if stage.ready else 0)
            if not stage.ready:
                tasks.append(loop.create_task(_prepare(stage, state.chain, memory, on_ready)))
    return tasks


class StateHolder:
    """Owns the current RouterState and reloads it when the watched files change."""

    def __init__(
        self,
        path: Path,
        upstream: Upstream,
        on_reload: Callable[[str], None],
        on_examples: ReadyFn = lambda stage, count: None,
    ) -> None:
        self.path = path
        self.upstream = upstream
        self.on_reload = on_reload
        self.on_examples = on_examples
        self.memory = ClassifierMemory()
        config, keys, print_ = load_files(path)  # at startup, before the loop serves requests
        self.current = build_state(config, keys, upstream, print_, self.memory)
        self._warming: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._warming = warm_up(self.current, self.memory, self.on_examples)

    async def reload_if_changed(self) -> bool:
        """Build and swap in a new state when the files changed; keep the old one on error."""
        files = watched_files(self.path, self.current.config)
        new_print = await asyncio.to_thread(fingerprint, files)
        if new_print == self.current.fingerprint:
            return False
        try:
            config, keys, new_print = await asyncio.to_thread(load_files, self.path)
            state = build_state(config, keys, self.upstream, new_print, self.memory)
        except (OSError, ValueError) as exc:
            log.error("config reload failed, keeping the previous config: %s", exc)
            self.on_reload("error")
            # Remember the bad content so it is not retried every interval. Hashed again now:
            # a file written in place (not swapped like a ConfigMap) may have been half
            # written when it was hashed above, and complete when it was parsed.
            bad_print = await asyncio.to_thread(fingerprint, files)
            self.current = replace(self.current, fingerprint=bad_print)
            return False
        self.current = state  # the atomic swap: one reference assignment
        for task in self._warming:  # the previous version's examples are no longer needed
            task.cancel()
        self._warming = warm_up(state, self.memory, self.on_examples)
        self.on_reload("success")
        log.info("config reloaded (%s)", new_print[:12])
        return True

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.current.config.reload_interval_seconds)
            try:
                await self.reload_if_changed()
            except Exception:  # the watcher must survive anything
                log.exception("config watch failed")

    async def close(self) -> None:
        for task in self._warming:
            task.cancel()
        await asyncio.gather(*self._warming, return_exceptions=True)
