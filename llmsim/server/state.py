"""Everything one server process holds: engine, capacity, limits, faults, stats."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from llmsim.engine.capacity import Capacity
from llmsim.engine.engine_stats import EngineStats
from llmsim.engine.faults import FaultInjector, load_fault_script, parse_fault_rates
from llmsim.engine.limits import RateLimiter
from llmsim.engine.loop import StreamLoop
from llmsim.engine.replicas import EnginePool
from llmsim.engine.simulator import Engine
from llmsim.engine.stats import Stats
from llmsim.record.served import profile_error_rates
from llmsim.server.config import engine_config, pool_config, vllm_config
from llmsim.server.live_config import CAPACITY, FAULTS, LATENCY, SharedConfig, apply_changes
from llmsim.server.peer_logs import PeerLogs
from llmsim.settings import Settings


@dataclass
class Shared:
    """What the worker processes of one server share; made before they fork."""

    stats: Stats
    limiter: RateLimiter
    engine_stats: EngineStats | None = None  # engine mode only
    worker: int = 0
    config: SharedConfig = field(default_factory=SharedConfig)  # PATCH /llmsim/config's changes
    peer_logs: PeerLogs | None = None  # --workers > 1: request-log lookups across workers

    @classmethod
    def create(cls, settings: Settings) -> Shared:
        """The stats tables and rate-limit table sized for `settings` (engine stats too with
        `--engine vllm`), in shared memory; peer_logs is left for the runner to add."""
        engine_stats = None
        if settings.engine == "vllm":
            engine_stats = EngineStats(settings.workers, settings.replicas)
        return cls(
            Stats(settings.workers, settings.stats_max_models, settings.stats_name_ttl_s),
            RateLimiter(settings.rate_limit_keys),
            engine_stats,
        )

    def bind_worker(self, worker: int) -> None:
        """Make this process write its own sections of the shared tables (once, after fork)."""
        self.worker = worker
        self.stats.bind_worker(worker)
        if self.engine_stats is not None:
            self.engine_stats.bind_worker(worker)


@dataclass
class ServerState:
    """One worker process's serving state: the settings in force (live changes included), the
    engine, capacity pools and fault injector built from them, and the Shared tables."""

    settings: Settings
    engine: Engine
    shared: Shared
    capacity: Capacity
    faults: FaultInjector
    known_models: frozenset[str] = field(default_factory=frozenset)
    loop: StreamLoop | None = None  # made on first use, in the process that serves

    def stream_loop(self) -> StreamLoop:
        """This worker's stream loop (and request log), made on the first call."""
        if self.loop is None:
            self.loop = StreamLoop(
                log_size=self.settings.request_log_size,
                coalesce_s=self.settings.coalesce_ms / 1000.0,
            )
        return self.loop

    engines: EnginePool | None = None  # --engine vllm: this worker's replicas
    base_settings: Settings | None = None  # as the server started; live changes go on top
    config_version: int = 0
    config_changes: dict[str, Any] = field(default_factory=dict)

    @property
    def stats(self) -> Stats:
        """The server-wide stats tables, shared by all workers."""
        return self.shared.stats

    @property
    def limiter(self) -> RateLimiter:
        """The --rpm/--tpm rate limiter, shared by all workers."""
        return self.shared.limiter

    @classmethod
    def create(
        cls, settings: Settings, shared: Shared | None = None, engine: Engine | None = None
    ) -> ServerState:
        """The state for a new app: `engine` and `shared` as given, or built from `settings`
        when None (the runner passes `shared`); with `--engine vllm`, this worker's replicas."""
        engine = engine or _engine(settings)
        if engine.cooperate is None:
            import gevent

            engine.cooperate = lambda: gevent.sleep(0)
        shared = shared or Shared.create(settings)
        engines = None
        known = set(settings.models)
        if settings.engine == "vllm":
            engines = EnginePool(vllm_config(settings), shared.engine_stats, shared.worker)
            known.add(engines.model)  # what a vLLM server serves: the preset's model
        return cls(
            settings=settings,
            engine=engine,
            shared=shared,
            capacity=_capacity(settings),
            faults=_faults(settings),
            known_models=frozenset(known),
            engines=engines,
            base_settings=settings,
        )

    def refresh(self) -> None:
        """Pick up a PATCH /llmsim/config made in any worker (cheap when nothing changed)."""
        if self.shared.config.version != self.config_version:
            version, changes = self.shared.config.read()
            self.reconfigure(version, changes)

    def reconfigure(self, version: int, changes: dict[str, Any]) -> None:
        """Apply live changes over the start-up settings; rebuild only what they touch."""
        base = self.base_settings or self.settings
        new = apply_changes(base, changes)
        old = self.settings
        per_model = old.per_model != new.per_model

        def differs(names: tuple[str, ...]) -> bool:
            return per_model or any(getattr(old, n) != getattr(new, n) for n in names)

        self.settings = new
        if differs(LATENCY):
            self.engine = _engine(new)
        if differs(CAPACITY):
            # Requests in flight keep (and give back) their slots in the old pools.
            self.capacity = _capacity(new)
        if differs(FAULTS):
            self.faults = _faults(new)
        self.config_version = version
        self.config_changes = changes


def _engine(settings: Settings) -> Engine:
    engine = Engine(engine_config(settings))
    if engine.cooperate is None:
        import gevent

        # Scanning a long reply for stop sequences lets other streams run meanwhile.
        engine.cooperate = lambda: gevent.sleep(0)
    return engine


def _capacity(settings: Settings) -> Capacity:
    return Capacity(settings.workers, lambda m: pool_config(settings, m))


def _faults(settings: Settings) -> FaultInjector:
    rules = load_fault_script(settings.fault_script) if settings.fault_script else []
    seed = None if settings.seed is None else settings.seed ^ 0x5EED
    return FaultInjector(
        parse_fault_rates(settings.fault),
        rules,
        random.Random(seed),
        profile_error_rates(settings.profile_file) if settings.profile_file else None,
    )
