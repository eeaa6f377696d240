"""Carrying out the core's actions with local processes: builds, jobs and services."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from substratus.api.common import EnvFrom
from substratus.api.kinds import KINDS, Notebook, NotebookStatus, Resource
from substratus.core.actions import EnsureService, StartJob
from substratus.core.graph import Key
from substratus.core.images import builtin_module
from substratus.core.naming import artifact_version
from substratus.core.observed import DepState, Observed
from substratus.core.world import mount_sources
from substratus.runtimes.local import limits, processes
from substratus.runtimes.local.builder import start_build
from substratus.runtimes.local.commits import commit_artifacts, sweep_retired
from substratus.runtimes.local.db import Run
from substratus.runtimes.local.engines import EngineError
from substratus.runtimes.local.launch import (
    ImageInfo,
    LaunchError,
    Mounts,
    check_exec,
    confine,
    container_argv,
    prepare_workdir,
    workload_argv,
    workload_env,
)
from substratus.runtimes.local.probes import Readiness
from substratus.runtimes.local.proxies import ROLE as ROLE_PROXY
from substratus.runtimes.local.proxies import Proxies
from substratus.runtimes.local.sandbox import Sandbox, sandbox

if TYPE_CHECKING:
    from substratus.runtimes.local.controller import Controller

log = logging.getLogger("substratus.supervisor")

# How long a replica that autoscaling removes may take to finish the requests it answers.
DRAIN_SECONDS = 60.0


class Runner:
    def __init__(self, ctl: Controller):
        self.ctl = ctl
        self.db = ctl.db
        self.paths = ctl.paths
        self.readiness = Readiness(self.db, ctl.enqueue)
        self.proxies = Proxies(self)
        # What ensure_service was last asked for, by object: an autoscaled Server's count.
        self.wanted: dict[Key, int] = {}

    # -- shared helpers -------------------------------------------------------------------

    def env_values(self, obj: Resource) -> dict[str, str]:
        out = {}
        for name, value in obj.spec.env.items():
            if isinstance(value, EnvFrom):
                ref = value.secret_key_ref
                out[name] = (self.db.get_secret(obj.metadata.namespace, ref.name) or {})[ref.key]
            else:
                out[name] = value
        return out

    def _mount(self, dep: DepState | None) -> Path | None:
        if dep is None or dep.url is None:
            return None
        local = self.ctl.store.local_path(dep.url)
        if local is not None:
            return local
        digest = hashlib.sha256(dep.url.encode()).hexdigest()[:16]
        return self.ctl.store.fetch(dep.url, self.paths.cache / "mounts" / digest)

    def _mounts(self, obj: Resource, obs: Observed) -> Mounts:
        sources = mount_sources(obs.deps)
        return Mounts(model=self._mount(sources.model), data=self._mount(sources.data))

    def image_info(self, obj: Resource, image: str) -> ImageInfo:
        if builtin_module(image) is not None and not obj.spec.image.has_build:
            return ImageInfo(ref=image, kind="builtin")
        build = self.db.runs(obj.key, role="build")
        result = build[-1].result if build else None
        if result and result.get("ref") == image:
            return ImageInfo(
                ref=image,
                kind=result["kind"],
                root=Path(result["root"]),
                python=Path(result["python"]) if result.get("python") else None,
            )
        return ImageInfo(ref=image, kind="container")

    def run_dir(
        self, obj: Resource, label: str, keep_artifacts_of: str | None = None
    ) -> tuple[Path, Path, Path]:
        """Working directory, log and exit file of a run. Jobs pass ``keep_artifacts_of``
        (their generation's directory): artifacts/ then survives a retry, as a volume
        would, so a trainer resumes from its checkpoints. A Notebook keeps one directory, as
        a notebook pod keeps its home volume: what the user saved survives restarts, suspend
        and spec changes. Everything else is made anew."""
        rel = Path(obj.metadata.namespace) / obj.PLURAL / obj.metadata.name
        persistent = isinstance(obj, Notebook) and label != "build"
        workdir = self.paths.runs / rel / ("home" if persistent else (keep_artifacts_of or label))
        log_file = self.paths.logs / rel / f"{label}.log"
        if workdir.exists():
            for entry in workdir.iterdir():
                if keep_artifacts_of and entry.name == "artifacts":
                    continue
                if persistent and entry.name not in ("model", "data", "params.json"):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        workdir.mkdir(parents=True, exist_ok=True)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        return workdir, log_file, log_file.with_suffix(".exit")

    def _launch(
        self,
        obj: Resource,
        role: str,
        generation: int,
        attempt: int,
        replica: int,
        image: str,
        obs: Observed,
        port: int | None = None,
    ) -> Run:
        label = f"g{generation}-a{attempt}" + (f"-r{replica}" if role == "service" else "")
        keep = f"g{generation}" if role == "job" else None
        workdir, log_file, exit_file = self.run_dir(obj, label, keep_artifacts_of=keep)
        info = self.image_info(obj, image)
        base = {
            "kind": obj.KIND,
            "namespace": obj.metadata.namespace,
            "name": obj.metadata.name,
            "role": role,
            "generation": generation,
            "attempt": attempt,
            "replica": replica,
            "image": image,
            "port": port,
            "workdir": str(workdir),
            "log": str(log_file.relative_to(self.paths.home)),
            "exit_file": str(exit_file),
            "started_at": time.time(),
        }
        gpus: list[int] = []
        cgroups: list[Path] = []
        try:
            mounts = self._mounts(obj, obs)
            box = sandbox() if info.kind != "container" else Sandbox(None)
            prepare_workdir(workdir, obj, mounts, info, bind=box.mode is not None)
            gpu = obj.spec.resources.gpu
            gpus = self.ctl.gpus.take(gpu.count, gpu.type) if gpu and gpu.count else []
            token = obj.status.token if isinstance(obj.status, NotebookStatus) else None
            env = workload_env(obj, info, self.env_values(obj), port=port, token=token, gpus=gpus)
            if info.kind == "container":
                argv = container_argv(
                    self.ctl.engine(), obj, info, workdir, mounts, env,
                    port=port, name=container_name(obj, label), gpus=gpus,
                )  # fmt: skip
            else:
                argv = workload_argv(obj, info)
            check_exec(obj, argv, env)
            if info.kind != "container":
                argv, cgroups = confine(box, obj, argv, env, workdir, mounts, log_file, label)
            popen = processes.spawn(
                argv, cwd=workdir, env=env, log=log_file, exit_file=exit_file, cgroups=cgroups
            )
        except (LaunchError, OSError, RuntimeError, ValueError) as exc:
            # Nothing may escape: an exception here would be retried every few seconds forever.
            self.ctl.gpus.give_back(gpus)
            limits.remove(cgroups)
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "a") as f:
                f.write(f"cannot start: {exc}\n")
            return self.db.add_run(
                **base, phase="failed", message=str(exc), finished_at=time.time()
            )
        # Recorded so that pruning keeps the artifact versions this run has mounted.
        result: dict[str, object] = {"mounts": [d.url for d in obs.deps.values() if d.url]}
        if info.kind == "container":
            result["container"] = container_name(obj, label)
        if cgroups:
            result["cgroups"] = [str(c) for c in cgroups]
        base["result"] = result
        run = self.db.add_run(
            **base,
            pid=popen.pid,
            pid_start=processes.start_time(popen.pid),
            gpus=",".join(map(str, gpus)),
        )
        self.watch(run, popen, cgroups)
        return run

    def watch(self, run: Run, popen: object, cgroups: list[Path] | None = None) -> None:
        """Settle the run when its process exits; probe a listening one's readiness."""
        threading.Thread(
            target=self._wait_child,
            args=(run.id, popen, cgroups or []),
            name=f"wait-{run.id}",
            daemon=True,
        ).start()
        if run.role == ROLE_PROXY:
            self.readiness.watch(run)

    def _wait_child(self, run_id: int, popen: object, cgroups: list[Path]) -> None:
        code = popen.wait()  # type: ignore[attr-defined]
        limits.remove(cgroups)
        self._exited(run_id, int(code))

    def _wait_foreign(self, run: Run) -> None:
        assert run.pid is not None
        processes.wait_foreign(run.pid, run.pid_start)
        limits.remove((run.result or {}).get("cgroups", []))
        self._exited(run.id, processes.read_exit_code(Path(run.exit_file)))

    def _exited(self, run_id: int, code: int | None) -> None:
        run = self.db.get_run(run_id)
        if run is None:
            return
        now = time.time()
        if run.role == "job" and code == 0:
            # "committing" claims the run: a concurrent stop no longer touches it.
            if not self.db.update_run(run_id, only_if_phase="running", phase="committing"):
                return  # stopped on purpose
            self._release(run)
            self.commit(run)
        else:
            message = "" if code is not None else "the process ended; its exit code is unknown"
            if not self.db.update_run(
                run_id,
                only_if_phase="running",
                phase="failed",
                exit_code=code,
                message=message,
                finished_at=now,
            ):
                return  # stopped on purpose
            self._release(run)
        self.ctl.enqueue(run.key)

    def _release(self, run: Run) -> None:
        self.readiness.set(run.id, False)
        self.ctl.gpus.give_back([int(g) for g in run.gpus.split(",") if g])
        self.ctl.ports.release(run.port)
        if (run.result or {}).get("mounts"):
            sweep_retired(self.ctl.store, self.db)  # what it mounted may be due for deletion

    def commit(self, run: Run) -> None:
        """Persist a succeeded job's artifacts; the run ends succeeded, or failed if that fails."""
        store = self.ctl.store
        kind, ns, name = run.key
        object_url = store.object_url(ns, KINDS[kind].PLURAL, name)
        try:
            result = commit_artifacts(
                store,
                object_url,
                artifact_version(run.generation, run.attempt, run.id),
                Path(run.workdir) / "artifacts",
                set(self.db.mounted_urls()),
                self.db.retire,
            )
        except Exception as exc:
            log.exception("committing %s failed", run.key)
            self.db.update_run(
                run.id,
                phase="failed",
                exit_code=0,
                message=f"the job succeeded but storing its artifacts failed: {exc}",
                finished_at=time.time(),
            )
            return
        self.db.update_run(
            run.id, phase="succeeded", exit_code=0, finished_at=time.time(), result=result
        )
        shutil.rmtree(run.workdir, ignore_errors=True)

    # -- actions --------------------------------------------------------------------------

    def start_job(self, obj: Resource, action: StartJob, obs: Observed) -> None:
        self.stop_runs(obj.key, roles=("job",))
        # Partial output of older generations is never resumed: drop it.
        runs_root = self.paths.runs / obj.metadata.namespace / obj.PLURAL / obj.metadata.name
        for old in runs_root.glob("g*"):
            if old.name != f"g{action.generation}":
                shutil.rmtree(old, ignore_errors=True)
        self._launch(obj, "job", action.generation, action.attempt, 0, action.image, obs)

    def ensure_service(self, obj: Resource, action: EnsureService, obs: Observed) -> None:
        running = self.db.runs(obj.key, role="service", phase="running")
        self.wanted[obj.key] = action.replicas
        kept = [
            r
            for r in running
            if r.generation == action.generation
            and r.image == action.image
            and r.replica < action.replicas
        ]
        if action.autoscaling is not None:
            # The proxy stops sending to a replica before it is stopped.
            self.proxies.ensure(obj, action.autoscaling, kept)
        else:
            self.stop_runs(obj.key, roles=(ROLE_PROXY,))
        for run in running:
            if run in kept:
                continue
            if action.autoscaling is not None and run.generation == action.generation:
                # Scaled down: once the proxy sends it nothing new, the replica finishes what
                # it answers (SIGTERM), unhurried.
                threading.Thread(target=self._drain, args=(obj, run), daemon=True).start()
            else:
                self.stop_run(run)
        live = {r.replica for r in self.db.runs(obj.key, role="service", phase="running")}
        history = [
            r for r in self.db.runs(obj.key, role="service") if r.generation == action.generation
        ]
        for replica in range(action.replicas):
            if replica in live:
                continue
            past = [r for r in history if r.replica == replica]
            attempt = 1
            if past:
                last = past[-1]
                failures = sum(1 for r in past if r.phase == "failed")
                wait = self.ctl.policy.delay(failures) - (time.time() - (last.finished_at or 0))
                if wait > 0:
                    self.ctl.enqueue(obj.key, wait)
                    continue
                attempt = last.attempt + 1
            port = self.ctl.ports.allocate()
            run = self._launch(
                obj, "service", action.generation, attempt, replica, action.image, obs, port
            )
            if run.phase == "running":
                self.readiness.watch(run)
            else:
                self.ctl.ports.release(port)
                self.ctl.enqueue(obj.key)
        if action.autoscaling is not None:
            replicas = self.db.runs(obj.key, role="service", phase="running")
            self.proxies.write_upstreams(obj, replicas)

    def _drain(self, obj: Resource, run: Run) -> None:
        self.proxies.released(obj, run)
        self.stop_run(run, DRAIN_SECONDS)

    def start_build(self, obj: Resource, source: str) -> None:
        start_build(self, obj, source)

    # -- stopping and recovery ------------------------------------------------------------

    def stop_run(self, run: Run, grace: float = 5.0) -> None:
        if not self.db.update_run(
            run.id, only_if_phase="running", phase="stopped", finished_at=time.time()
        ):
            return  # it ended by itself meanwhile; its waiter settles it
        self.readiness.set(run.id, False)
        if run.pid is not None:
            processes.terminate_group(run.pid, run.pid_start, grace)
            limits.remove((run.result or {}).get("cgroups", []))  # also kills stragglers
        container = (run.result or {}).get("container")
        if container:
            # The engine's client may die before its container does: stop that too.
            with contextlib.suppress(EngineError, OSError):
                engine = self.ctl.engine()
                if engine is not None:
                    engine.stop(container)
        self._release(run)

    def stop_runs(
        self, key: Key, roles: tuple[str, ...] = ("job", "service", "build", ROLE_PROXY)
    ) -> None:
        for run in self.db.runs(key, phase="running"):
            if run.role in roles:
                self.stop_run(run)

    def recover(self) -> None:
        """Adopt the workloads that outlived a previous supervisor; settle those that ended.

        Settling (which may commit artifacts to a bucket) happens in threads, so the
        supervisor answers its clients at once."""
        for run in self.db.runs(phase="committing"):
            threading.Thread(target=self._settle_commit, args=(run,), daemon=True).start()
        for run in self.db.runs(phase="running"):
            if run.role == "build" or run.pid is None:
                # Builds run inside the supervisor and died with it: build again.
                self.db.update_run(run.id, phase="stopped", message="interrupted by a restart")
                continue
            if run.gpus:
                self.ctl.gpus.claim([int(g) for g in run.gpus.split(",")])
            if processes.alive(run.pid, run.pid_start):
                if run.port is not None:
                    self.ctl.ports.reserve(run.port)
                threading.Thread(target=self._wait_foreign, args=(run,), daemon=True).start()
                if run.role in ("service", ROLE_PROXY):
                    self.readiness.watch(run)
            else:
                limits.remove((run.result or {}).get("cgroups", []))
                code = processes.read_exit_code(Path(run.exit_file))
                threading.Thread(target=self._exited, args=(run.id, code), daemon=True).start()
        # A supervisor killed half-way through stopping a run left its cgroup (and maybe a
        # process in it, which removing the cgroup kills).
        for phase in ("stopped", "failed"):
            for run in self.db.runs(phase=phase):
                left = [c for c in (run.result or {}).get("cgroups", []) if Path(c).exists()]
                limits.remove(left)
        # Retired versions whose users ended while no supervisor ran.
        threading.Thread(target=sweep_retired, args=(self.ctl.store, self.db), daemon=True).start()

    def _settle_commit(self, run: Run) -> None:
        self.commit(run)
        self.ctl.enqueue(run.key)

    def forget(self, key: Key, plural: str) -> None:
        """Remove the runs, working directories and logs of a deleted object."""
        self.stop_runs(key)
        self.db.delete_runs(key)
        rel = Path(key[1]) / plural / key[2]
        for root in (self.paths.runs, self.paths.logs):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(root / rel)


def container_name(obj: Resource, label: str) -> str:
    return f"substratus-{obj.metadata.namespace}-{obj.PLURAL}-{obj.metadata.name}-{label}"
