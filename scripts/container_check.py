"""Build the container image, run it, and bring compose.yaml up for one bench run (podman).

Not part of the test suite (it builds an image: minutes, not seconds). Needs podman and
podman-compose, and a local python:3.11-slim (../shared/containers/local-base.sh makes one on a
machine without a registry). Everything listens on 127.0.0.1 only. Prints the figures
docs/container.md quotes:

    python scripts/container_check.py            # build, run, compose
    python scripts/container_check.py --no-build # reuse the image built last time
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "llmsim:latest"


def run(*cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, echoing it; its output is captured and returned."""
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=check, text=True, capture_output=True, cwd=ROOT, **kw)


def free_port() -> int:
    """A free loopback port (the project's own helper)."""
    sys.path.insert(0, str(ROOT))
    from llmsim.bench.preflight import free_port as _free_port

    return _free_port()


def wait_http(url: str, timeout_s: float) -> float:
    """Seconds until url answers 200; raises after timeout_s."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {timeout_s:.0f}s")


def build() -> float:
    """Build the image (docker format, so HEALTHCHECK is kept); returns the build's seconds."""
    start = time.monotonic()
    # --no-cache: the figure is a first build's, not a cached layer's.
    cmd = ["podman", "build", "--pull=never", "--no-cache", "--format", "docker", "-t", IMAGE, "."]
    proc = run(*cmd, check=False)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit("podman build failed")
    return time.monotonic() - start


def check_image() -> dict[str, float]:
    """Run the image on a loopback port: /health, one chat completion, non-root, the health
    check, and SIGTERM during a stream (the stream finishes, the exit status is 0)."""
    from openai import OpenAI

    port = free_port()
    name = f"llmsim-check-{port}"
    start = time.monotonic()
    run("podman", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", IMAGE)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 60)
        startup = time.monotonic() - start  # from `podman run` to the first 200 on /health
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-local")
        reply = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello"}],
            max_tokens=8,
        )
        text = reply.choices[0].message.content
        tokens = reply.usage.completion_tokens
        print(f"chat completion from the container: {text!r} ({tokens} tokens)")
        assert reply.usage.completion_tokens == 8 or reply.choices[0].finish_reason == "stop"
        user = run("podman", "exec", name, "id", "-u").stdout.strip()
        assert user != "0", "the container runs as root"
        health = run("podman", "inspect", "--format", "{{json .Config.Healthcheck}}", name)
        assert "health" in health.stdout, f"no HEALTHCHECK in the image: {health.stdout}"
        # podman runs health checks from systemd timers; ask for one directly.
        run("podman", "healthcheck", "run", name)
        # SIGTERM with a stream in flight: it must finish, and the container exit 0.
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello"}],
            max_tokens=150,  # about 3 s: well past gevent's default 1 s stop timeout
            stream=True,
        )
        chunks = iter(stream)
        next(chunks)  # the stream is under way
        stop_start = time.monotonic()
        stopper = subprocess.Popen(["podman", "stop", "-t", "20", name], stdout=subprocess.DEVNULL)
        rest = list(chunks)
        finish = [c.choices[0].finish_reason for c in rest if c.choices]
        stopper.wait(30)
        stopped = time.monotonic() - stop_start
        code = run("podman", "inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        print(f"stop during a stream: {len(rest)} more chunks, finish {finish[-1]}, exit {code}")
        assert finish[-1] == "length" and code == "0", (finish[-1:], code)
    finally:
        run("podman", "rm", "-f", name, check=False)
    # A stop that took the whole -t would mean SIGTERM was ignored and SIGKILL ended it.
    assert stopped < 15, f"podman stop took {stopped:.1f}s: SIGTERM was not handled"
    return {"startup_s": startup, "drain_stop_s": stopped}


def _ready(stats: dict) -> int:
    """How many workers of the master's /stats/requests are ready for a run."""
    return sum(w.get("state") == "ready" for w in stats.get("workers", []))


def compose_bench(workers: int) -> dict[str, float]:
    """compose.yaml up with `workers` Locust workers; one run started through the web UI's API,
    stopped after 20 requests."""
    compose = shutil.which("podman-compose") or "podman-compose"
    web_port = free_port()
    env = {
        **os.environ,
        "LLMSIM_PORT": str(free_port()),
        "LLMSIM_WEB_PORT": str(web_port),
        "LLMSIM_EXPECT_WORKERS": str(workers),
    }
    project = f"llmsimcheck{web_port}"
    base = [compose, "-p", project, "-f", "compose.yaml"]
    start = time.monotonic()
    up = run(*base, "up", "-d", "--no-build", "--scale", f"worker={workers}", env=env, check=False)
    if up.returncode != 0:
        print(up.stdout[-3000:], up.stderr[-3000:], sep="\n")
    try:
        wait_http(f"http://127.0.0.1:{web_port}/", 120)
        web = f"http://127.0.0.1:{web_port}"
        # Wait for the workers to join, then start a run as the web UI's Start button does.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with urllib.request.urlopen(web + "/stats/requests", timeout=5) as resp:
                joined = json.load(resp).get("workers", [])
            if _ready({"workers": joined}) >= workers:
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"fewer than {workers} workers joined the master")
        ready = time.monotonic() - start
        # Start a run as the web UI's Start button does. On a loaded machine the first run
        # after the workers join can lose them (the master marks them missing and stops): then
        # start it again once they are back, as a user would, and say so.
        starts = 0
        stats: dict = {}
        run_start = time.monotonic()
        while True:
            if not starts or (stats["state"] == "stopped" and _ready(stats) >= workers):
                form = b"user_count=10&spawn_rate=10"
                req = urllib.request.Request(web + "/swarm", data=form, method="POST")
                req.add_header("Content-Type", "application/x-www-form-urlencoded")
                urllib.request.urlopen(req, timeout=10).read()
                starts += 1
            time.sleep(2)
            with urllib.request.urlopen(web + "/stats/requests", timeout=5) as resp:
                stats = json.load(resp)
            total = next(s for s in stats["stats"] if s["name"] == "Aggregated")
            # Replies take seconds and workers report every 3 s: wait for 20 requests.
            if total["num_requests"] >= 20 or time.monotonic() - run_start > 120:
                break
        run_s = time.monotonic() - run_start
        if starts > 1:
            print(f"compose bench: the run had to be started {starts} times")
        urllib.request.urlopen(urllib.request.Request(web + "/stop", method="POST"), timeout=10)
        print(
            f"compose bench: {len(stats.get('workers', []))} workers, "
            f"{total['num_requests']} requests in {run_s:.0f} s, {total['num_failures']} failures"
        )
        assert total["num_requests"] > 0 and total["num_failures"] == 0, total
        return {"compose_ready_s": ready, "requests": total["num_requests"], "run_starts": starts}
    finally:
        logs = run(*base, "logs", "master", env=env, check=False)
        print(logs.stdout[-1500:])
        run(*base, "down", "-v", "-t", "5", env=env, check=False)
        # podman-compose's down can leave a container behind (a stop that timed out): remove
        # what carries the project's label, so no worker of this check outlives it.
        label = f"label=com.docker.compose.project={project}"
        left = run("podman", "ps", "-aq", "--filter", label, check=False).stdout.split()
        if left:
            run("podman", "rm", "-f", "-t", "2", *left, check=False)
        run("podman", "network", "rm", "-f", f"{project}_default", check=False)
        run("podman", "volume", "rm", "-f", f"{project}_reports", check=False)


def image_size_mb(name: str) -> float:
    """The size of local image `name` in MB, as podman reports it."""
    out = run("podman", "image", "inspect", "--format", "{{.Size}}", name).stdout
    return int(out.strip()) / 1e6


def main() -> None:
    """Build the image (unless --no-build), run it, bring compose up and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-build", action="store_true", help="Reuse the image built last.")
    parser.add_argument("--workers", type=int, default=2, help="Locust workers in compose.")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    if not args.no_build:
        figures["build_s"] = build()
    figures["image_mb"] = image_size_mb(IMAGE)
    figures["base_mb"] = image_size_mb("python:3.11-slim")
    figures.update(check_image())
    figures.update(compose_bench(args.workers))
    print("\nfigures:")
    for key, value in figures.items():
        print(f"  {key:16} {value:.1f}")


if __name__ == "__main__":
    main()
