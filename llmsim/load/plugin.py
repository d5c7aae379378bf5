"""Hooks llmsim's metrics into Locust: options, finer percentiles, distributed merge, results, UI.

`install()` runs when `llmsim.locust` is imported (i.e. when Locust loads a locustfile that uses
our users), before Locust forks `--processes` workers, so every process gets the same patches.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import gevent
import locust.stats
from locust import events
from locust.runners import STATE_RUNNING, MasterRunner
from locust.stats import StatsCSV

from llmsim import gcpolicy
from llmsim.load.histogram import install_bucketing
from llmsim.load.metrics import PAYLOAD_KEY
from llmsim.load.options import (
    SWARM_PROCESSES,
    SWARM_USERS,
    add_arguments,
    resolve_config,
    results_dir,
)
from llmsim.load.runtime import get_runtime
from llmsim.load.webui import install_web_ui
from llmsim.load.workload import warm_up

logger = logging.getLogger(__name__)
_installed = False


def _csv_ms(value: float) -> float | int:
    # Locust casts CSV percentiles to int, a 6 % error at 17 ms; keep our bucket's precision.
    return int(value) if value >= 100 or value == int(value) else round(value, 1)


def _percentile_fields(self: StatsCSV, stats_entry: Any, use_current: bool = False) -> list[Any]:
    if not stats_entry.num_requests:
        return self.percentiles_na
    if use_current and stats_entry.use_response_times_cache:
        get = stats_entry.get_current_response_time_percentile
    else:
        get = stats_entry.get_response_time_percentile
    return [_csv_ms(get(p) or 0) for p in self.percentiles_to_report]


def install() -> None:
    """Idempotent: patch Locust and register the event listeners once per process."""
    global _installed
    if _installed:
        return
    _installed = True
    install_bucketing()
    locust.stats.StatsCSV._percentile_fields = _percentile_fields  # type: ignore[method-assign]
    events.init_command_line_parser.add_listener(add_arguments)
    events.init.add_listener(_on_init)
    events.test_start.add_listener(_on_test_start_before_init)


def _on_test_start_before_init(environment: Any, **_: Any) -> None:
    """Start the run of a worker whose test started before init fired (then a no-op).

    A worker that joins a running test gets its spawn message while it connects, and Locust
    fires test_start as soon as any init hook yields (a user's own, or ours warming up),
    before `_on_init` has registered the listeners: without this, that worker never kept its
    requests.csv rows.
    """
    rt = get_runtime(environment)
    if not rt.hooked:
        rt.on_test_start(results_dir(environment.parsed_options))


def _validate_and_warm_up(environment: Any) -> None:
    """Fail fast on bad settings, and load encodings and datasets before any request is timed:
    loading o200k takes about 0.5 s, during which every greenlet of the process would stall."""
    from llmsim.load.base import LLMUser

    for cls in environment.user_classes or []:
        if issubclass(cls, LLMUser):
            try:
                cfg = resolve_config(cls, environment.parsed_options)
                warm_up(cfg.model, cfg.system_prompt, cfg.dataset)
                if cfg.trace:
                    from llmsim.load.trace import load_trace

                    load_trace(cfg.trace)
            except (ValueError, OSError) as e:
                raise SystemExit(f"llmsim: invalid setting for {cls.__name__}: {e}") from None


def _finite(environment: Any) -> bool:
    """Every user class is ours and stops after --llm-requests-per-user requests."""
    from llmsim.load.base import LLMUser

    classes = environment.user_classes or []

    def finite(cls: type) -> bool:
        cfg = resolve_config(cls, environment.parsed_options)
        return bool(cfg.trace) or (cfg.requests_per_user > 0 and not cfg.open_loop)

    return bool(classes) and all(issubclass(cls, LLMUser) and finite(cls) for cls in classes)


def _soft_end_after(environment: Any, runner: Any) -> float | None:
    """The run time after which llmsim's users end themselves, or None (Locust ends the run).

    When a headless run's time is up, Locust stops every user at one instant: 500 users
    mean ~50 ms of work in this process while their streams are being read, and every
    first token due then is measured that much late. A standalone run of llmsim's users
    instead lets each user finish the request it is in and stop (so that work is spread over
    the requests' own ends); Locust's own stop, moved --stop-timeout later, only cuts what is
    still running then, as --stop-timeout always did. Distributed runs keep Locust's stop:
    the master alone knows the time.
    """
    from llmsim.load.base import LLMUser

    opts = environment.parsed_options
    if opts is None or not opts.headless or not getattr(opts, "run_time", None):
        return None
    if isinstance(runner, MasterRunner) or not environment.stop_timeout:
        return None
    classes = environment.user_classes or []
    if not classes or not all(issubclass(cls, LLMUser) for cls in classes):
        return None
    return float(opts.run_time)


def _end_softly(environment: Any, rt: Any, after_s: float) -> None:
    gevent.sleep(after_s)
    rt.ending = True  # LLMUser.chat_task: no new request; each user stops after its own
    # Locust's stop (the backstop, --stop-timeout from now) cuts whatever is still running.
    environment.stop_timeout = 0
    _end_when_all_users_are_done(environment, "the run time is up and every request ended")


def _end_when_all_users_are_done(
    environment: Any, why: str = "every user made its --llm-requests-per-user requests"
) -> None:
    # Locust keeps a run going after every user has stopped; a run of N requests per user
    # should end when the last one is done (workers report their user counts every 3 s).
    runner = environment.runner
    # Users must have been seen first: a master can be "running" with 0 users while its
    # workers are still spawning (their reports come every 3 s, late on a busy machine).
    while not (runner.state == STATE_RUNNING and runner.user_count > 0):
        gevent.sleep(0.2)
    while not (runner.state == STATE_RUNNING and runner.user_count == 0):
        gevent.sleep(0.5)
    logger.info("llmsim: %s, stopping", why)
    runner.stop()
    if environment.parsed_options is None or not environment.parsed_options.headless:
        return
    # Linger before quitting: Locust writes its --csv files once a second and workers report
    # every 3 s; quitting at once would leave the last requests out of Locust's own CSV.
    gevent.sleep(4.0 if isinstance(runner, MasterRunner) else 1.5)
    runner.quit()


def _on_init(environment: Any, runner: Any = None, web_ui: Any = None, **_: Any) -> None:
    rt = get_runtime(environment)
    _validate_and_warm_up(environment)
    # libev caches the loop's clock: after a blocking warm-up (seconds on a busy machine), the
    # --run-time timer Locust sets next would start from a stale "now" and cut the run short.
    gevent.get_hub().loop.update_now()
    opts = environment.parsed_options
    if not getattr(opts, "llm_default_gc", False):
        gcpolicy.install()  # after the warm-up: what it loaded is frozen out of every scan
    ev = environment.events
    soft_end = _soft_end_after(environment, runner)
    if soft_end is not None:  # Locust's own stop becomes the backstop (see _soft_end_after)
        opts.run_time = math.ceil(soft_end + environment.stop_timeout)
        logger.info(
            "llmsim: after %gs each user ends once its request is done; Locust's stop at %ss "
            "(run time + --stop-timeout) cuts what is still running then",
            soft_end,
            opts.run_time,
        )

    watcher: list[gevent.Greenlet] = []

    def on_test_start(**_: Any) -> None:
        opts = environment.parsed_options
        if opts is not None and not rt.is_worker:
            # Open-loop users split the rate among the swarm: tell them its size (Locust sends
            # custom options to workers with the spawn messages that follow).
            r = environment.runner
            setattr(opts, SWARM_USERS, int(getattr(r, "target_user_count", 0) or 0) or None)
            if isinstance(r, MasterRunner):
                workers = len(r.clients.ready) + len(r.clients.running) + len(r.clients.spawning)
                setattr(opts, SWARM_PROCESSES, max(1, workers))
            else:
                setattr(opts, SWARM_PROCESSES, 1)
        rt.on_test_start(results_dir(opts))
        if not rt.is_worker and _finite(environment):
            watcher.append(gevent.spawn(_end_when_all_users_are_done, environment))
        elif soft_end is not None:
            watcher.append(gevent.spawn(_end_softly, environment, rt, soft_end))

    def on_test_stop(**_: Any) -> None:
        while watcher:
            g = watcher.pop()
            if g is not gevent.getcurrent():  # the watcher stops the run itself, then lingers
                g.kill(block=False)
        rt.on_test_stop()

    def on_report_to_master(client_id: str, data: dict[str, Any], **_: Any) -> None:
        data[PAYLOAD_KEY] = rt.metrics.take_delta()

    def on_worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
        delta = data.get(PAYLOAD_KEY)
        if delta:
            rt.metrics.merge_delta(client_id, delta)

    def on_reset_stats(**_: Any) -> None:
        rt.metrics.reset()
        rt.timeline.metrics_reset()

    def on_spawning_complete(**_: Any) -> None:
        if environment.reset_stats:  # --reset-stats: Locust resets its rows, we follow
            rt.metrics.reset()
            rt.timeline.metrics_reset()

    def on_quitting(**_: Any) -> None:
        if rt.end_time is None and rt.start_time is not None:
            rt.on_test_stop()
        rt.write_results()

    def on_quit(**_: Any) -> None:
        # Fired after the runner has quit and workers sent their last reports (Ctrl-C too).
        rt.write_results(final=True)

    ev.test_start.add_listener(on_test_start)
    ev.test_stop.add_listener(on_test_stop)
    ev.report_to_master.add_listener(on_report_to_master)
    ev.worker_report.add_listener(on_worker_report)
    ev.reset_stats.add_listener(on_reset_stats)
    ev.spawning_complete.add_listener(on_spawning_complete)
    ev.quitting.add_listener(on_quitting)
    ev.quit.add_listener(on_quit)
    rt.hooked = True
    if web_ui is not None:
        install_web_ui(web_ui, rt)
