"""The control plane the operator is tested against: a real kube-apiserver (tests/kube/cluster.py).

Core set (etcd + kube-apiserver): authentication and RBAC are on, our CRDs are accepted and
Established, a Model can be created, read, watched and have its status written through the status
subresource, `kubectl get ai` finds it, and schema violations are rejected with the field named.
Full set (+ kube-controller-manager, kube-scheduler, kwok): a Job whose pod asks for an
``nvidia.com/gpu`` is scheduled onto the simulated GPU node, runs and completes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.kube.cluster import (
    ADMIN_USER,
    GPU_COUNT,
    GPU_NODE,
    REPO,
    ControlPlane,
    ControlPlaneUnavailable,
    find_binaries,
    pinned_versions,
    remove_stale_dirs,
)

lightkube = pytest.importorskip("lightkube", reason="pip install lightkube")

from lightkube import ApiError  # noqa: E402
from lightkube.generic_resource import create_namespaced_resource  # noqa: E402
from lightkube.models.batch_v1 import JobSpec  # noqa: E402
from lightkube.models.core_v1 import (  # noqa: E402
    Container,
    PodSpec,
    PodTemplateSpec,
    ResourceRequirements,
    Toleration,
)
from lightkube.models.meta_v1 import ObjectMeta  # noqa: E402
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition  # noqa: E402
from lightkube.resources.batch_v1 import Job  # noqa: E402
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount  # noqa: E402
from lightkube.types import PatchType  # noqa: E402

pytestmark = pytest.mark.integration

GPU_TOLERATION = Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
Model = create_namespaced_resource("substratus.ai", "v1", "Model", "models")


def _model(name: str, **spec: Any) -> Any:
    return Model(
        metadata=ObjectMeta(name=name),
        spec=spec or {"image": {"name": "substratusai/model-loader-huggingface"}},
    )


def _until(what: str, fn: Any, timeout: float = 60, every: float = 0.2) -> Any:
    """Poll ``fn`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not in {timeout}s (last: {last!r})")


# ---------------------------------------------------------------------------------------------
# The API server itself


def test_api_server_is_real_pinned_and_authenticated(kube_control_plane: ControlPlane) -> None:
    plane = kube_control_plane
    assert plane.api("GET", "/readyz") == "ok"
    version = plane.api("GET", "/version")
    if not os.environ.get("KUBEBUILDER_ASSETS"):
        assert version["gitVersion"] == pinned_versions()["KUBERNETES_VERSION"]

    # kubectl with the generated kubeconfig: the admin client certificate, in system:masters.
    who = json.loads(plane.kubectl("auth", "whoami", "-o", "json").stdout)
    assert who["status"]["userInfo"]["username"] == ADMIN_USER
    assert "system:masters" in who["status"]["userInfo"]["groups"]
    served = json.loads(plane.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert served["gitVersion"] == version["gitVersion"]

    # Without a client certificate the request is anonymous, and RBAC forbids it.
    anon = ssl.create_default_context(cafile=str(plane.pki.ca_crt) if plane.pki else None)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(plane.url + "/api/v1/namespaces", context=anon, timeout=10)
    assert err.value.code == 403


def test_namespace_create_and_read(kube_client: Any) -> None:
    name = f"ns-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    created = kube_client.create(Namespace(metadata=ObjectMeta(name=name, labels={"t": "kube"})))
    assert created.metadata.uid
    got = kube_client.get(Namespace, name)
    assert got.metadata.labels["t"] == "kube"
    assert got.status.phase == "Active"
    assert name in {n.metadata.name for n in kube_client.list(Namespace, labels={"t": "kube"})}
    kube_client.delete(Namespace, name)


# ---------------------------------------------------------------------------------------------
# Our CustomResourceDefinitions


def test_crds_are_accepted_and_established(substratus_crds: list[str], kube_client: Any) -> None:
    assert substratus_crds == [
        "datasets.substratus.ai",
        "models.substratus.ai",
        "notebooks.substratus.ai",
        "servers.substratus.ai",
    ]
    for name in substratus_crds:
        crd = kube_client.get(CustomResourceDefinition, name)
        conds = {c.type: c.status for c in crd.status.conditions}
        assert conds.get("Established") == "True", (name, conds)
        assert conds.get("NamesAccepted") == "True", (name, conds)
        assert crd.spec.group == "substratus.ai"
        assert crd.spec.scope == "Namespaced"
        assert crd.spec.names.categories == ["ai"]
        assert [(v.name, v.served, v.storage) for v in crd.spec.versions] == [("v1", True, True)]
        assert crd.spec.versions[0].subresources.status is not None


def test_model_create_read_watch_and_status_subresource(
    substratus_crds: list[str], kube_control_plane: ControlPlane, kube_namespace: str
) -> None:
    ns = kube_namespace
    writer = kube_control_plane.client()
    watcher = kube_control_plane.client()
    try:
        created = writer.create(
            _model(
                "base",
                image={"name": "substratusai/model-loader-huggingface"},
                params={"name": "gpt2"},
            ),
            namespace=ns,
        )
        assert created.metadata.generation == 1
        got = writer.get(Model, "base", namespace=ns)
        assert got.spec["params"] == {"name": "gpt2"}

        # Watch: ADDED for the existing object, then MODIFIED when the status is written.
        seen: list[tuple[str, Any]] = []
        for op, obj in watcher.watch(Model, namespace=ns, server_timeout=30):
            seen.append((op, obj.status))
            if op == "ADDED" and obj.metadata.name == "base":
                writer.patch(
                    Model.Status,
                    "base",
                    {
                        "status": {
                            "ready": True,
                            "url": "s3://bucket/ns/models/base",
                            "observedGeneration": 1,
                            "conditions": [
                                {
                                    "type": "Ready",
                                    "status": "True",
                                    "reason": "Succeeded",
                                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                                }
                            ],
                        }
                    },
                    namespace=ns,
                    patch_type=PatchType.MERGE,
                )
            elif op == "MODIFIED" and (obj.status or {}).get("ready"):
                break
        else:
            raise AssertionError(f"no MODIFIED event with ready status: {seen}")
        assert [op for op, _ in seen] == ["ADDED", "MODIFIED"]

        after = writer.get(Model, "base", namespace=ns)
        assert after.status["url"] == "s3://bucket/ns/models/base"
        assert after.status["conditions"][0]["message"] == ""  # defaulted by the schema
        assert after.metadata.generation == 1  # a status write is not a spec change

        # Through the main resource, status is ignored and spec changes bump the generation.
        writer.patch(
            Model,
            "base",
            {"spec": {"params": {"name": "gpt2-medium"}}, "status": {"ready": False}},
            namespace=ns,
            patch_type=PatchType.MERGE,
        )
        after = writer.get(Model, "base", namespace=ns)
        assert after.status["ready"] is True
        assert after.metadata.generation == 2
        assert after.spec["params"]["name"] == "gpt2-medium"
    finally:
        writer.close()
        watcher.close()


def test_kubectl_get_ai_lists_every_kind(
    substratus_crds: list[str], kube_control_plane: ControlPlane, kube_namespace: str
) -> None:
    plane, ns = kube_control_plane, kube_namespace
    docs = [
        {"kind": "Model", "metadata": {"name": "m1"}, "spec": {"image": {"name": "loader"}}},
        {"kind": "Dataset", "metadata": {"name": "d1"}, "spec": {"image": {"name": "loader"}}},
    ]
    manifest = "\n---\n".join(json.dumps({"apiVersion": "substratus.ai/v1", **d}) for d in docs)
    plane.kubectl("apply", "-n", ns, "-f", "-", input=manifest)

    def listed() -> set[str]:
        r = plane.kubectl("get", "ai", "-n", ns, "-o", "name", check=False)
        return set(r.stdout.split()) if r.returncode == 0 else set()

    # Discovery learns the new category a moment after the CRDs are Established.
    want = {"model.substratus.ai/m1", "dataset.substratus.ai/d1"}
    assert _until("kubectl get ai", lambda: listed() == want, timeout=20)

    table = plane.kubectl("get", "ml", "-n", ns).stdout  # the short name, the printer columns
    assert re.match(r"NAME\s+READY\s+PROGRESS\s+SIZE\s+AGE", table), table
    assert "m1" in table


@pytest.mark.parametrize(
    ("image", "field", "reason"),
    [
        (
            {
                "git": {"url": "https://example.com/r.git"},
                "upload": {"md5": "d41d8cd98f00b204e9800998ecf8427e"},
            },
            "spec.image",
            "set at most one of git and upload",
        ),
        ({"git": {"url": " "}}, "spec.image.git.url", "must not be empty"),
        ({}, "spec.image", "set one of name, git or upload"),
    ],
    ids=["git-and-upload", "empty-git-url", "no-image-source"],
)
def test_schema_violation_is_rejected_with_the_field(
    substratus_crds: list[str],
    kube_control_plane: ControlPlane,
    kube_client: Any,
    kube_namespace: str,
    image: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    with pytest.raises(ApiError) as err:
        kube_client.create(_model("bad", image=image), namespace=kube_namespace)
    assert err.value.status.code == 422
    # From the schema's CEL rules (a cause per field) or, for the string-or-object image, from
    # the admission policy (api/policy.py), whose message names the field.
    causes = (err.value.status.details and err.value.status.details.causes) or []
    by_schema = any(c.field == field and reason in c.message for c in causes)
    assert by_schema or f"{field}: {reason}" in str(err.value.status.message), err.value.status

    # kubectl says the same to a user.
    doc = {"apiVersion": "substratus.ai/v1", "kind": "Model", "metadata": {"name": "bad"}}
    doc["spec"] = {"image": image}
    r = kube_control_plane.kubectl(
        "apply", "-n", kube_namespace, "-f", "-", input=json.dumps(doc), check=False
    )
    assert r.returncode != 0
    assert field in r.stderr and reason in r.stderr, r.stderr


def test_server_rejects_a_wrong_type_with_the_field(
    substratus_crds: list[str], kube_client: Any, kube_namespace: str
) -> None:
    spec = {"image": {"name": "x"}, "resources": {"gpu": {"count": -1}}, "command": "python"}
    with pytest.raises(ApiError) as err:
        kube_client.create(_model("bad", **spec), namespace=kube_namespace)
    fields = {c.field for c in err.value.status.details.causes}
    assert {"spec.resources.gpu.count", "spec.command"} <= fields, fields


def test_examples_are_accepted_by_the_server(
    substratus_crds: list[str], kube_control_plane: ControlPlane, kube_namespace: str
) -> None:
    """Every manifest under examples/ passes the server's schema (a server-side dry run)."""
    files = sorted((REPO / "examples").rglob("*.yaml"))
    assert files
    args = [a for f in files for a in ("-f", str(f))]
    r = kube_control_plane.kubectl(
        "apply", "--dry-run=server", "-n", kube_namespace, *args, check=False
    )
    assert r.returncode == 0, r.stderr
    applied = [line for line in r.stdout.splitlines() if "(server dry run)" in line]
    docs = sum(len(re.findall(r"^kind:", f.read_text(), re.M)) for f in files)
    assert len(applied) == docs, r.stdout


# ---------------------------------------------------------------------------------------------
# Full set: controllers, scheduler, a simulated GPU node


def _default_service_account(client: Any, ns: str) -> Any:
    """The namespace's default ServiceAccount (made by kube-controller-manager); pods need it."""

    def get() -> Any:
        try:
            return client.get(ServiceAccount, "default", namespace=ns)
        except ApiError:
            return None

    return _until("default ServiceAccount", get, timeout=30)


def test_gpu_node_is_ready_with_capacity(kube_cluster: ControlPlane) -> None:
    node = kube_cluster.api("GET", f"/api/v1/nodes/{GPU_NODE}")
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == str(GPU_COUNT)
    assert node["status"]["capacity"]["nvidia.com/gpu"] == str(GPU_COUNT)
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"


def test_gpu_job_is_scheduled_on_the_kwok_node_and_completes(
    kube_cluster: ControlPlane, kube_client: Any, kube_namespace: str
) -> None:
    ns = kube_namespace
    _default_service_account(kube_client, ns)
    gpu = {"nvidia.com/gpu": "1"}
    job = Job(
        metadata=ObjectMeta(name="train"),
        spec=JobSpec(
            backoffLimit=0,
            template=PodTemplateSpec(
                spec=PodSpec(
                    restartPolicy="Never",
                    tolerations=[GPU_TOLERATION],
                    containers=[
                        Container(
                            name="main",
                            image="substratusai/trainer",  # never pulled: kwok runs no containers
                            command=["python", "-m", "train"],
                            resources=ResourceRequirements(requests=gpu, limits=gpu),
                        )
                    ],
                )
            ),
        ),
    )
    kube_client.create(job, namespace=ns)

    def finished() -> Any:
        j = kube_client.get(Job, "train", namespace=ns)
        conds = {c.type: c.status for c in (j.status.conditions or [])}
        assert conds.get("Failed") != "True", j.status
        return j if conds.get("Complete") == "True" else None

    done = _until("Job Complete", finished, timeout=90)
    assert done.status.succeeded == 1
    assert not done.status.failed
    pods = list(kube_client.list(Pod, namespace=ns, labels={"job-name": "train"}))
    assert len(pods) == 1
    pod = pods[0]
    assert pod.spec.nodeName == GPU_NODE
    assert pod.status.phase == "Succeeded"
    assert pod.spec.containers[0].resources.limits == gpu
    scheduled = [c for c in pod.status.conditions if c.type == "PodScheduled"]
    assert scheduled and scheduled[0].status == "True"


def test_more_gpus_than_the_node_has_stays_unschedulable(
    kube_cluster: ControlPlane, kube_client: Any, kube_namespace: str
) -> None:
    ns = kube_namespace
    _default_service_account(kube_client, ns)
    too_many = {"nvidia.com/gpu": str(GPU_COUNT + 1)}
    pod = Pod(
        metadata=ObjectMeta(name="greedy"),
        spec=PodSpec(
            tolerations=[GPU_TOLERATION],
            containers=[
                Container(
                    name="main",
                    image="x",
                    resources=ResourceRequirements(requests=too_many, limits=too_many),
                )
            ],
        ),
    )
    kube_client.create(pod, namespace=ns)

    def unschedulable() -> Any:
        p = kube_client.get(Pod, "greedy", namespace=ns)
        conds = [c for c in (p.status.conditions or []) if c.type == "PodScheduled"]
        return conds[0] if conds and conds[0].reason == "Unschedulable" else None

    cond = _until("PodScheduled=False", unschedulable, timeout=30)
    assert "nvidia.com/gpu" in cond.message
    assert not kube_client.get(Pod, "greedy", namespace=ns).spec.nodeName


# ---------------------------------------------------------------------------------------------
# Teardown: nothing is left behind


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_kills_every_process_and_removes_its_files(kube_control_plane: ControlPlane) -> None:
    names = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
    try:
        find_binaries(names)
        full = True
    except ControlPlaneUnavailable:
        full = False
    plane = ControlPlane().start()
    try:
        if full:
            plane.start_nodes()
        pids, tmp = plane.pids, plane.tmp
        assert tmp is not None and tmp.is_dir()
        assert len(pids) == (5 if full else 2) and all(_running(p) for p in pids)
    finally:
        plane.stop()
    assert not [p for p in pids if _running(p)]
    assert not tmp.exists()
    plane.stop()  # idempotent


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_an_interrupted_or_killed_test_process_leaves_no_server(
    kube_control_plane: ControlPlane, sig: signal.Signals
) -> None:
    """Ctrl-C stops everything; even SIGKILL (no cleanup code runs) takes the servers with it,
    and the next start removes the files it left."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.kube.cluster"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = _read_line(proc, timeout=60)
        assert "KUBECONFIG=" in line, line
        kids = _children(proc.pid)
        assert len(kids) == 2 and all(_running(k) for k in kids), kids
        tmp = Path(line.split("KUBECONFIG=")[1].split()[0]).parent
        assert tmp.is_dir()
        proc.send_signal(sig)
        proc.wait(timeout=30)
        _until("servers gone", lambda: not [k for k in kids if _running(k)], timeout=10)
        if sig == signal.SIGKILL:
            assert tmp.exists()  # nothing ran to remove it...
            remove_stale_dirs()  # ...until the next ControlPlane.start() does this
        assert not tmp.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline() if proc.stdout else ""))
    t.daemon = True
    t.start()
    t.join(timeout)
    if not box:
        proc.kill()
        raise AssertionError("the control plane did not start in time")
    return box[0]
