"""`llmsim bench`: start the target and the swarm, show progress, write the reports, judge SLOs."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from llmsim.bench.config import BenchConfig
from llmsim.bench.embedded import EmbeddedServer, start_embedded_server
from llmsim.bench.errors import BenchError
from llmsim.bench.monitor import ProcessMonitor
from llmsim.bench.preflight import check_port_free, check_reachable, normalize_target
from llmsim.bench.progress import ProgressDisplay
from llmsim.bench.reports import write_reports
from llmsim.bench.swarm import LOCUST_CSV_PREFIX, LOCUST_HTML, Swarm, start_swarm
from llmsim.record.bench_hook import RECORDING, RecorderProcess, start_recorder

EXIT_OK, EXIT_SLO_FAILED, EXIT_CANNOT_RUN = 0, 1, 2
POLL_S = 0.2
# Beyond the run time and the stop timeout, how long Locust may take to write its files and
# exit before bench stops waiting (a hung process must not hang CI).
EXIT_GRACE_S = 60.0
# Locust's own CPU warning reads one sample (a start-up spike sets it off); bench warns when
# Locust's processes averaged this much over this long.
CPU_WARN_PERCENT = 90.0
CPU_WINDOW_S = 10.0
# A target that fails every one of its first requests with these kinds (a wrong path, nothing
# listening) is not worth a whole run: bench stops within the first seconds.
DEAD_KINDS = ("http_404", "http_405", "connection")
DEAD_MIN_REQUESTS = 3
DEAD_WITHIN_S = 15.0


def oversaturation_reason(in_flight: list[int], limit: float) -> str | None:
    """A sweep level is plainly over-saturated when requests in flight passed `limit` (several
    times what the server held at saturation) and still grew over the last 3 s."""
    if len(in_flight) < 4:
        return None
    last = in_flight[-4:]
    if last[-1] > limit and last[0] < last[1] < last[2] < last[3]:
        return f"{last[-1]} requests in flight and growing, past the limit of {limit:.0f}"
    return None


def dead_target_reason(sample: dict[str, Any], elapsed: float) -> str | None:
    """Why to stop a run whose first requests all failed against a wrong or absent target."""
    total, failed = sample.get("llm_requests") or 0, sample.get("llm_failed") or 0
    errors = sample.get("errors") or {}
    if elapsed > DEAD_WITHIN_S or total < DEAD_MIN_REQUESTS or failed < total or not errors:
        return None
    if not all(k in DEAD_KINDS for k in errors):
        return None
    kind = max(errors, key=errors.get)
    first = (sample.get("error_samples") or {}).get(kind, kind)
    what = (
        "answered 404 to"
        if kind == "http_404"
        else ("refused" if kind == "connection" else f"failed ({kind})")
    )
    return f"the target {what} all of the first {total} requests ({first})"


def make_run_dir(reports_dir: str, label: str | None, now: dt.datetime | None = None) -> Path:
    """reports/<YYYYmmdd-HHMMSS>[-label]/, never reusing an existing directory."""
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    name = stamp
    if label:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")
        if safe:
            name += "-" + safe
    base = Path(reports_dir)
    path = base / name
    n = 2
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            path = base / f"{name}-{n}"
            n += 1
        except OSError as exc:
            # An unwritable or non-directory --reports-dir is the user's to fix: one line, not
            # a traceback.
            raise BenchError(
                f"--reports-dir {reports_dir}: cannot create {path} ({exc.strerror or exc})"
            ) from None


@dataclass
class RunState:
    """What bench saw of the run through the progress pipe."""

    started: float | None = None
    stopped: float | None = None
    last: dict[str, Any] = field(default_factory=dict)
    users_peak: int = 0
    cpu_warnings: int = 0
    worker_cpu_max: float = 0.0
    master_cpu_max: float = 0.0
    runs: int = 0
    interrupted: bool = False
    workload: dict[str, Any] = field(default_factory=dict)  # user class -> resolved options
    cpu_sustained_max: float = 0.0  # Locust's highest CPU averaged over CPU_WINDOW_S
    dead_target: str | None = None  # why the run was stopped early: every request failed
    oversaturated: str | None = None  # a sweep level stopped early: why
    in_flight: list[int] = field(default_factory=list)  # per sample, for the saturation check


class _Interrupts:
    """Ctrl-C (or SIGTERM) once: stop the swarm and write the reports. Twice: stop waiting.

    Both signals are handled alike, and handled even when bench was started with SIGINT
    ignored (a script's `cmd &`): the handler is installed whatever was there before.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.count = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, _sig: int, _frame: Any) -> None:
        self.count += 1

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def simulator_lateness(base_url: str) -> dict[str, Any] | None:
    """The embedded simulator's own lateness (GET /llmsim/stats), or None if it cannot say.

    Fidelity (measured minus planned TTFT) is the simulator's lateness plus the client's: with
    this a report can say which side was late.
    """
    url = base_url.removesuffix("/v1") + "/llmsim/stats"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            stats = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    late = (stats.get("stream_loop") or {}).get("lateness")
    if not late:
        return None
    keep = ("count", "p50_ms", "p99_ms", "max_ms")
    return {kind: {k: late[kind].get(k) for k in keep} for kind in ("first_event", "events")}


def run_bench(
    cfg: BenchConfig,
    out: TextIO | None = None,
    err: TextIO | None = None,
    shared_server: EmbeddedServer | None = None,
    on_summary: Callable[[dict[str, Any], Path], None] | None = None,
) -> int:
    """Run one benchmark; returns the exit status (0 ok, 1 SLO failed, 2 could not run).

    `shared_server`: an embedded simulator the caller started and stops (a sweep's levels
    share one). `on_summary(summary, run_dir)` is called with the final summary.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    human = err if cfg.json_output else out  # with --json, stdout carries the JSON alone

    # Everything that can be checked before starting anything is checked first.
    target = normalize_target(cfg.target) if cfg.target else None
    if cfg.locustfile and not Path(cfg.locustfile).is_file():
        raise BenchError(f"--locustfile {cfg.locustfile}: no such file")
    if cfg.web:
        check_port_free(cfg.web_host, cfg.web_port, "--web-host", "--web-port")
    if cfg.master:
        check_port_free(
            cfg.master_bind_host, cfg.master_bind_port, "--master-bind-host", "--master-bind-port"
        )
    if target and shared_server is None:
        check_reachable(target, cfg.effective_api_key)

    run_dir = make_run_dir(cfg.reports_dir, cfg.label)
    server: EmbeddedServer | None = None
    swarm: Swarm | None = None
    monitor = ProcessMonitor()
    state = RunState()
    recorder = None
    try:
        if shared_server is not None:
            target = shared_server.base_url
            monitor.watch("simulator", shared_server.pid)
        elif target is None:
            server = start_embedded_server(
                cfg.simulator_flags, cfg.simulator_config, run_dir / "server.log"
            )
            target = server.base_url
            monitor.watch("simulator", server.pid)
        embedded = server or shared_server
        if cfg.records(embedded is not None):
            recorder = start_recorder(target, run_dir)
            monitor.watch("recorder", recorder.pid)
        _say(human, f"llmsim bench: {_describe(cfg, target, embedded)}")
        if recorder is not None:
            _say(human, f"llmsim bench: recording every request into {run_dir / RECORDING}")
        swarm = start_swarm(cfg, recorder.base_url if recorder else target, run_dir)
        monitor.watch("locust", swarm.pid)
        monitor.watch("bench", os.getpid())
        simulator = _simulator_settings(cfg, embedded.url) if embedded else None
        kind = "embedded" if embedded else "external"
        reached_target: str = target

        def report(locust_status: int | None) -> dict[str, Any]:
            return write_reports(
                run_dir,
                cfg,
                target=reached_target,
                target_kind=kind,
                state=state,
                client=monitor.summary(),
                locust_status=locust_status,
                simulator=simulator,
                interference=monitor.interference,
            )

        _drive(cfg, swarm, monitor, state, human, run_dir, report)
    except BenchError:
        _cleanup(swarm, server, recorder)
        if state.started is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    except BaseException:
        _cleanup(swarm, server, recorder)
        raise
    locust_status = swarm.proc.returncode
    swarm.close()
    if recorder is not None:
        recorder.stop()
    if server is not None:
        if simulator is not None:  # how late the simulator's own writes left (its share)
            lateness = simulator_lateness(server.base_url)
            if lateness is not None:
                simulator["lateness_ms"] = lateness
        server.stop()

    if state.started is None:
        if cfg.web:
            shutil.rmtree(run_dir, ignore_errors=True)
            _say(human, "no run was started in the web UI: nothing to report")
            return EXIT_OK
        raise BenchError(f"Locust did not start a run: {_locust_failure(run_dir)}")

    summary = report(locust_status)
    if on_summary is not None:
        on_summary(summary, run_dir)
    if state.dead_target:
        raise BenchError(f"{state.dead_target}; check --target (report: {run_dir / 'report.html'})")
    return _finish(cfg, summary, run_dir, out, human)


def _drive(
    cfg: BenchConfig,
    swarm: Swarm,
    monitor: ProcessMonitor,
    state: RunState,
    human: TextIO,
    run_dir: Path,
    report: Callable[[int | None], dict[str, Any]],
) -> None:
    run_s = cfg.warmup_s + cfg.duration_s
    display = ProgressDisplay(human, None if cfg.web else run_s) if cfg.progress else None
    last_sample = 0.0
    waiting_note = 0.0
    with _Interrupts() as interrupts:
        handled = 0
        deadline: float | None = None
        while True:
            for ev in swarm.events():
                _on_event(ev, cfg, state, display, human, run_dir, report)
            if swarm.proc.poll() is not None:
                for ev in swarm.events():
                    _on_event(ev, cfg, state, display, human, run_dir, report)
                break
            now = time.monotonic()
            if interrupts.count > handled:
                handled = interrupts.count
                state.interrupted = state.started is not None and state.stopped is None
                if handled == 1:
                    _note(
                        display,
                        human,
                        "stopping: the users finish, then the reports are written "
                        "(Ctrl-C again to stop at once)",
                    )
                    swarm.interrupt()
                    deadline = now + cfg.stop_timeout_s + EXIT_GRACE_S
                elif handled == 2:
                    swarm.terminate()
                    deadline = now + 10
                else:
                    swarm.kill()
            if (state.dead_target or state.oversaturated) and not interrupts.count:
                swarm.interrupt()
                interrupts.count = handled = 1
                deadline = now + 10
            if now - last_sample >= 1.0:
                last_sample = now
                monitor.sample()
                sustained = monitor.sustained_cpu("locust", CPU_WINDOW_S)
                if sustained is not None and sustained >= CPU_WARN_PERCENT:
                    state.cpu_warnings += 1
                    state.cpu_sustained_max = max(state.cpu_sustained_max, sustained)
                    if state.cpu_warnings == 1:
                        _note(
                            display,
                            human,
                            f"warning: Locust's CPU averaged {sustained:.0f} % over the last "
                            f"{CPU_WINDOW_S:g} s: its timings are no longer to be trusted "
                            "(use --processes)",
                        )
                if display is not None and state.started is not None and state.stopped is None:
                    display.update(state.last, time.time() - state.started)
                elif state.started is None and cfg.master and now - waiting_note > 5:
                    waiting_note = now
                    connected = state.last.get("workers", 0)
                    _note(
                        display,
                        human,
                        f"waiting for workers: {connected} of {cfg.expect_workers} connected",
                    )
            if deadline is None and not cfg.web and state.started is not None:
                deadline = (
                    time.monotonic()
                    + run_s
                    - (time.time() - state.started)
                    + cfg.stop_timeout_s
                    + EXIT_GRACE_S
                )
            if deadline is not None and now > deadline:
                _note(display, human, "Locust did not exit in time; stopping it")
                swarm.terminate()
                try:
                    swarm.proc.wait(10)
                except Exception:
                    swarm.kill()
                break
            time.sleep(POLL_S)
    if display is not None:
        display.end_line()


def _on_event(
    ev: dict[str, Any],
    cfg: BenchConfig,
    state: RunState,
    display: ProgressDisplay | None,
    human: TextIO,
    run_dir: Path,
    report: Callable[[int | None], dict[str, Any]],
) -> None:
    kind = ev.get("event")
    if kind == "sample" or kind == "test_stop":
        state.last = ev
        state.users_peak = max(state.users_peak, int(ev.get("users") or 0))
        state.master_cpu_max = max(state.master_cpu_max, float(ev.get("cpu") or 0))
        for c in ev.get("worker_cpu") or []:
            state.worker_cpu_max = max(state.worker_cpu_max, float(c))
    if kind == "test_start":
        state.started = ev["time"]
        state.stopped = None
        state.workload = ev.get("workload") or {}
        state.runs += 1
        state.users_peak = 0
        if cfg.web and state.runs > 1:
            _note(display, human, "new run started in the web UI: its report replaces the last one")
    elif kind == "test_stop":
        state.stopped = ev["time"]
        if cfg.web:
            # The user stopped the run in the browser: write its reports now, and again (with
            # Locust's own final files) when bench exits.
            _save_web_files(cfg, run_dir)
            summary = report(None)
            _note(
                display,
                human,
                f"run stopped ({summary['requests']['total']} requests); report: "
                f"{run_dir / 'report.html'} (start another run, or Ctrl-C to quit)",
            )
    if kind == "sample" and cfg.oversaturation_limit and state.oversaturated is None:
        state.in_flight.append(int(ev.get("in_flight") or 0))
        state.oversaturated = oversaturation_reason(state.in_flight, cfg.oversaturation_limit)
        if state.oversaturated:
            _note(display, human, f"stopping this level early: {state.oversaturated}")
    if kind == "sample" and state.dead_target is None and state.started is not None:
        state.dead_target = dead_target_reason(ev, time.time() - state.started)
        if state.dead_target:
            _note(display, human, f"stopping: {state.dead_target}")


def _save_web_files(cfg: BenchConfig, run_dir: Path) -> None:
    """In web mode Locust writes its CSV/HTML only at exit; fetch this run's copies now."""
    host = "127.0.0.1" if cfg.web_host in ("", "*", "0.0.0.0") else cfg.web_host
    base = f"http://{host}:{cfg.web_port}"
    for path, name in (
        ("/stats/requests/csv", f"{LOCUST_CSV_PREFIX}_stats.csv"),
        ("/stats/failures/csv", f"{LOCUST_CSV_PREFIX}_failures.csv"),
        ("/stats/report?download=1&theme=light", LOCUST_HTML),
    ):
        try:
            with urllib.request.urlopen(base + path, timeout=10) as resp:
                (run_dir / name).write_bytes(resp.read())
        except OSError:
            pass


def _note(display: ProgressDisplay | None, human: TextIO, text: str) -> None:
    if display is not None:
        display.note(text)
    else:
        _say(human, text)


def _say(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


def _cleanup(
    swarm: Swarm | None, server: EmbeddedServer | None, recorder: RecorderProcess | None = None
) -> None:
    if swarm is not None:
        swarm.terminate()
        try:
            swarm.proc.wait(10)
        except Exception:
            pass
        swarm.close()
    if server is not None:
        server.stop()
    if recorder is not None:
        recorder.stop()


def _describe(cfg: BenchConfig, target: str, server: EmbeddedServer | None) -> str:
    where = f"embedded simulator at {target}" if server else target
    if cfg.trace:
        load = f"trace {cfg.trace}" + (f" at {cfg.trace_speed:g}x" if cfg.trace_speed else "")
    elif cfg.rate is not None:
        load = f"{cfg.rate:g} requests/s ({cfg.arrival or 'poisson'})"
    else:
        load = f"{cfg.users} users"
    warm = f" after {cfg.warmup_s:g} s of warm-up" if cfg.warmup_s else ""
    mode = (
        f"web UI at http://{cfg.web_host}:{cfg.web_port}"
        if cfg.web
        else f"{load} for {cfg.duration_s:g} s{warm}"
    )
    extra = ""
    if cfg.processes:
        extra = f", {cfg.processes} Locust processes"
    if cfg.master:
        extra = f", master waiting for {cfg.expect_workers} workers on port {cfg.master_bind_port}"
    return f"{mode} against {where}{extra}"


def _simulator_settings(cfg: BenchConfig, url: str) -> dict[str, Any] | None:
    """The embedded simulator's resolved settings, with the address it really listens on."""
    from urllib.parse import urlsplit

    from llmsim.settings import load_settings

    overrides = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in cfg.simulator_flags.items()
        if v is not None and v != ()
    }
    try:
        settings = load_settings(config=cfg.simulator_config, overrides=overrides).to_dict()
    except Exception:
        return None
    # bench starts it on a free port (server_args), which the resolved defaults do not know:
    # they said `llmsim serve`'s port 8080, not the one the run used.
    where = urlsplit(url)
    if where.hostname:
        settings["host"] = where.hostname
    if where.port:
        settings["port"] = where.port
    return settings


def _locust_failure(run_dir: Path) -> str:
    """The line of Locust's log that says why it stopped before starting."""
    log = run_dir / "locust.log"
    try:
        lines = [ln.strip() for ln in log.read_text("utf-8", errors="replace").splitlines()]
    except OSError:
        return "it exited without a word"
    lines = [ln for ln in lines if ln]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Exit)\b", ln) or "error" in ln.lower():
            return f"{ln} (see {log})"
    return f"{lines[-1]} (see {log})" if lines else "it exited without a word"


def _finish(
    cfg: BenchConfig, summary: dict[str, Any], run_dir: Path, out: TextIO, human: TextIO
) -> int:
    from llmsim.bench.report_files import terminal, verdict

    code = int(summary.get("exit_code", EXIT_OK))
    if cfg.json_output:
        out.write(json.dumps(summary, indent=2) + "\n")
        out.flush()
    _say(human, terminal(summary))
    _say(human, f"{verdict(summary)}; report: {run_dir / 'report.html'}")
    return code
