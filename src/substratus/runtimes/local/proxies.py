"""An autoscaled Server's proxy as a local process, and the list of replicas it forwards to."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from substratus.api.kinds import Autoscaling, Resource
from substratus.core.autoscale import LOAD_PATH
from substratus.core.contract import API_KEYS_ENV
from substratus.runtimes.local import processes
from substratus.runtimes.local.db import Run
from substratus.runtimes.local.launch import bind_address, service_url

if TYPE_CHECKING:
    from substratus.runtimes.local.runner import Runner

ROLE = "proxy"
MODULE = "substratus.workloads.proxy"
RELEASE_SECONDS = 3.0  # the proxy reads its replicas' file at least once a second


def settings(policy: Autoscaling, keys: str) -> str:
    """What the proxy process is started with: a change restarts it (the keys by digest)."""
    digest = hashlib.sha256(keys.encode()).hexdigest()[:12] if keys else "none"
    return (
        f"{MODULE} queueLimit={policy.queue_limit} timeout={policy.queue_timeout_seconds} "
        f"window={policy.scale_down_delay_seconds} keys={digest}"
    )


class Proxies:
    def __init__(self, runner: Runner):
        self.runner = runner
        self.db = runner.db
        self.ctl = runner.ctl

    def running(self, obj: Resource) -> Run | None:
        runs = self.db.runs(obj.key, role=ROLE, phase="running")
        return runs[-1] if runs else None

    def upstreams_file(self, obj: Resource) -> Path:
        meta = obj.metadata
        return self.runner.paths.runs / meta.namespace / obj.PLURAL / meta.name / "upstreams.json"

    def ensure(self, obj: Resource, policy: Autoscaling, replicas: list[Run]) -> None:
        """One proxy with these settings runs for ``obj``, forwarding to ``replicas``."""
        self.write_upstreams(obj, replicas)
        run = self.running(obj)
        try:
            keys = self.runner.env_values(obj).get(API_KEYS_ENV, "")
        except KeyError:
            return  # the keys' Secret went away: the proxy keeps the keys it has
        want = settings(policy, keys)
        if run is not None and run.image == want:
            return
        if run is not None:
            self.runner.stop_run(run)
        history = self.db.runs(obj.key, role=ROLE)
        last = history[-1] if history else None
        if last is not None and last.phase == "failed":
            failures = sum(1 for r in history[-10:] if r.phase == "failed")
            wait = self.ctl.policy.delay(failures) - (time.time() - (last.finished_at or 0))
            if wait > 0:
                self.ctl.enqueue(obj.key, wait)
                return
        self._launch(obj, policy, keys, want, last)

    def _launch(
        self, obj: Resource, policy: Autoscaling, keys: str, want: str, last: Run | None
    ) -> None:
        # The same port as the proxy before, when it is free: status.url stays the same.
        port = self.ctl.ports.allocate(prefer=last.port if last else None)
        rel = Path(obj.metadata.namespace) / obj.PLURAL / obj.metadata.name
        attempt = (last.attempt + 1) if last else 1
        log_file = self.runner.paths.logs / rel / f"proxy-{attempt}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        exit_file = log_file.with_suffix(".exit")
        workdir = self.upstreams_file(obj).parent
        env = dict(os.environ)
        env.pop(API_KEYS_ENV, None)  # the Server's keys, or none: never the supervisor's
        if keys:
            env[API_KEYS_ENV] = keys
        env.update(
            PORT=str(port),
            HOST=bind_address(),
            UPSTREAMS_FILE=str(self.upstreams_file(obj)),
            QUEUE_LIMIT=str(policy.queue_limit),
            QUEUE_TIMEOUT_SECONDS=str(policy.queue_timeout_seconds),
            LOAD_WINDOW_SECONDS=str(policy.scale_down_delay_seconds),
        )
        base = {
            "kind": obj.KIND,
            "namespace": obj.metadata.namespace,
            "name": obj.metadata.name,
            "role": ROLE,
            "generation": obj.metadata.generation or 0,
            "attempt": attempt,
            "replica": 0,
            "image": want,
            "port": port,
            "workdir": str(workdir),
            "log": str(log_file.relative_to(self.runner.paths.home)),
            "exit_file": str(exit_file),
            "started_at": time.time(),
        }
        try:
            popen = processes.spawn(
                [sys.executable, "-m", MODULE], cwd=workdir, env=env, log=log_file,
                exit_file=exit_file, cgroups=[],
            )  # fmt: skip
        except OSError as exc:
            self.ctl.ports.release(port)
            self.db.add_run(**base, phase="failed", message=str(exc), finished_at=time.time())
            self.ctl.enqueue(obj.key, self.ctl.policy.delay(1))
            return
        run = self.db.add_run(**base, pid=popen.pid, pid_start=processes.start_time(popen.pid))
        self.runner.watch(run, popen)

    def write_upstreams(self, obj: Resource, replicas: list[Run]) -> None:
        """The replicas' URLs, replaced whole (the proxy reads it when its mtime changes)."""
        urls = sorted(service_url(r.port) for r in replicas if r.port is not None)
        path = self.upstreams_file(obj)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(urls)
        try:
            if path.read_text() == text:
                return
        except OSError:
            pass
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    def released(self, obj: Resource, replica: Run) -> None:
        """Wait (at most RELEASE_SECONDS) until the proxy no longer lists ``replica``, so that
        it sends it nothing new: a replica stopped before that could be sent a request while
        it shuts down, which it would refuse. Called after the replicas' file is rewritten."""
        proxy = self.url(obj)
        if proxy is None or replica.port is None:
            return
        gone = service_url(replica.port)
        deadline = time.monotonic() + RELEASE_SECONDS
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(proxy + LOAD_PATH, timeout=1) as answer:
                    if gone not in json.load(answer).get("upstreams", []):
                        return
            except (OSError, ValueError):
                return  # the proxy is gone or restarting: it will read the file as it is
            time.sleep(0.05)

    def url(self, obj: Resource) -> str | None:
        """The proxy's address, once it answers."""
        run = self.running(obj)
        if run is None or run.port is None or not self.runner.readiness.is_ready(run.id):
            return None
        return service_url(run.port)
