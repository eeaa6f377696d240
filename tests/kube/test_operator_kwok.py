"""The operator on kwok's simulated nodes: every example manifest walks from apply to Ready, and
the test reads the children it made (the Job's or Deployment's pod spec: image, command, env,
mounts, requests and limits, node selectors and tolerations, where the pod landed). GPU Jobs
land only on GPU nodes of their type (the GKE profile); a type no node has is Unschedulable,
said in the Model's condition.

kwok runs no containers, so nothing commits artifacts: the test plays the committer, writing
each run's artifacts (with the real storage code) to the version its first Job commits to
before applying. Real nodes, if the session started one, are cordoned for this module."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from string import Template
from typing import Any

import pytest

from substratus.api import parse_documents
from substratus.api.kinds import KINDS
from substratus.core.graph import dependencies
from substratus.core.images import builtin_module, image_repository
from substratus.core.params import params_env
from substratus.storage import ArtifactStore
from tests.kube.cluster import REPO, ControlPlane, Proc
from tests.kube.node import static_volumes
from tests.kube.operatorproc import apply, running_operator, wait_for

pytestmark = pytest.mark.integration

EXAMPLES = REPO / "examples"
# One namespace per example set; the notebook example uses the quickstart's model and dataset.
SETS = {
    "quickstart": [*sorted((EXAMPLES / "quickstart").glob("*.yaml")), EXAMPLES / "notebook.yaml"],
    "local": sorted((EXAMPLES / "local").glob("*.yaml")),
    "opt-125m": sorted((EXAMPLES / "opt-125m").glob("*.yaml")),
    "llamacpp": sorted((EXAMPLES / "llamacpp").glob("*.yaml")),
}
VARS = {"QUICKSTART_DIR": "/q", "SMOLLM2_GGUF_URL": "file:///q/m.gguf"}
HOME_CLASS = "substratus-kwok-home"
NODES = {  # kwok nodes: name -> (GPUs, labels)
    "kwok-cpu-0": (0, {}),
    "kwok-l4-0": (4, {"cloud.google.com/gke-accelerator": "nvidia-l4"}),
    "kwok-t4-0": (4, {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}),
}


@pytest.fixture(scope="module")
def kwok_nodes(kube_cluster: ControlPlane) -> Iterator[ControlPlane]:
    plane = kube_cluster
    real = [
        n["metadata"]["name"]
        for n in json.loads(plane.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        if (n["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node") != "fake"
    ]
    for name in real:
        plane.kubectl("cordon", name)
    for name, (gpus, labels) in NODES.items():
        plane.create_kwok_node(name, gpus, labels)
    # kwok mounts nothing: the paths are never used.
    paths = [f"/nonexistent/{HOME_CLASS}-{i}" for i in range(2)]
    plane.kubectl("apply", "-f", "-", input=static_volumes(HOME_CLASS, paths, "10Gi"))
    try:
        yield plane
    finally:
        plane.kubectl("delete", "node", *NODES, "--wait=false", check=False)
        plane.kubectl("delete", f"storageclass/{HOME_CLASS}", check=False)
        plane.kubectl(
            "delete", "pv", f"{HOME_CLASS}-0", f"{HOME_CLASS}-1", "--wait=false", check=False
        )
        for name in real:
            plane.kubectl("uncordon", name, check=False)


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"file://{tmp_path_factory.mktemp('bucket')}"


@pytest.fixture(scope="module")
def operator(
    kwok_nodes: ControlPlane,
    substratus_crds: list[str],
    bucket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proc]:
    settings = {
        "SUBSTRATUS_ARTIFACT_URL": bucket,
        "SUBSTRATUS_HELPER_IMAGE": "substratus.local/helper:kwok",
        "SUBSTRATUS_CLOUD": "gke",
        "SUBSTRATUS_NOTEBOOK_STORAGE_CLASS": HOME_CLASS,
    }
    with running_operator(kwok_nodes, tmp_path_factory.mktemp("operator"), settings) as proc:
        yield proc


def precommit(
    bucket: str, ns: str, kind: str, name: str, tmp: Path, version: str = "g1-a1-k8s"
) -> str:
    """What the Job of ``kind/name`` for ``version`` would commit, committed: its URL."""
    store = ArtifactStore(bucket)
    files = tmp / f"{ns}-{name}-{version}"
    files.mkdir()
    (files / "weights.bin").write_bytes(f"{name} {version}".encode())
    object_url = store.object_url(ns, KINDS[kind].PLURAL, name)
    store.commit(files, object_url, version)
    return store.version_url(object_url, version)


def get(plane: ControlPlane, ns: str, what: str) -> list[dict[str, Any]]:
    out = plane.kubectl("get", what, "-n", ns, "-o", "json").stdout
    return list(json.loads(out)["items"])


def pod_of(plane: ControlPlane, ns: str, labels: dict[str, str]) -> dict[str, Any]:
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    deadline = time.monotonic() + 30
    while True:
        found = json.loads(
            plane.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json").stdout
        )["items"]
        if found and found[0]["spec"].get("nodeName"):
            return dict(found[0])
        assert time.monotonic() < deadline, f"no scheduled pod with {selector}"
        time.sleep(0.3)


def main_container(spec: dict[str, Any]) -> dict[str, Any]:
    return dict(next(c for c in spec["containers"] if c["name"] == "main"))


@pytest.mark.parametrize("example", sorted(SETS))
def test_every_example_reaches_ready_with_the_contract_in_its_children(
    operator: Proc, kwok_nodes: ControlPlane, bucket: str, example: str, tmp_path: Path
) -> None:
    plane = kwok_nodes
    ns = f"ex-{example}"
    plane.kubectl("create", "namespace", ns)
    try:
        objs = [
            obj
            for path in SETS[example]
            for obj in parse_documents(Template(path.read_text()).safe_substitute(VARS), str(path))
        ]
        urls = {
            o.metadata.name: precommit(bucket, ns, o.KIND, o.metadata.name, tmp_path)
            for o in objs
            if o.IS_JOB
        }
        for path in SETS[example]:
            text = Template(path.read_text()).safe_substitute(VARS)
            plane.kubectl("apply", "-n", ns, "-f", "-", input=text)
        for o in objs:
            done = "Succeeded" if o.IS_JOB else "Serving"
            status = wait_for(plane, operator, ns, o.KIND, o.metadata.name, done)["status"]
            if o.IS_JOB:
                assert status["url"] == urls[o.metadata.name]
                assert status["files"] == ["weights.bin"]
        jobs = {
            j["metadata"]["annotations"]["substratus.ai/object-name"]: j
            for j in get(plane, ns, "jobs")
        }
        deployments = {
            d["metadata"]["annotations"]["substratus.ai/object-name"]: d
            for d in get(plane, ns, "deployments")
        }
        for o in objs:
            name = o.metadata.name
            child = jobs[name] if o.IS_JOB else deployments[name]
            spec = child["spec"]["template"]["spec"]
            main = main_container(spec)
            image = o.spec.image.name
            assert image is not None
            assert main["image"] == f"docker.io/{image_repository(image)}:latest"
            # Under the contract's shell: the user's command, else the built-in's module.
            argv = o.spec.command or ["python", "-m", builtin_module(image)]
            assert main["command"][:2] == ["/substratus/bin/sh", "-c"]
            assert main["command"][4:] == argv
            env = {e["name"]: e.get("value") for e in main["env"]}
            assert {k: env.get(k) for k in params_env(o.spec.params)} == params_env(o.spec.params)
            mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
            assert "/content" in mounts and "/content/params.json" in mounts
            fetches = spec["initContainers"][0]["args"]
            for dep in dependencies(o):  # fetched from the committed version, mounted read-only
                sub = "model" if dep.key[0] == "Model" else "data"
                assert mounts[f"/content/{sub}"]["readOnly"] is True
                assert f"{urls[dep.key[2]]}=/fetch/{sub}" in fetches
                if o.KIND == "Server":
                    assert mounts["/model/saved"]["readOnly"] is True
            res = o.spec.resources
            requests = main["resources"].get("requests", {})
            if res.cpu is not None:
                assert requests["cpu"] == f"{res.cpu:g}" == main["resources"]["limits"]["cpu"]
            if res.memory is not None:
                assert requests["memory"] == f"{res.memory:g}Gi"
            assert "nodeSelector" not in spec  # no example asks for a GPU
            labels = child["spec"]["template"]["metadata"]["labels"]
            pod = pod_of(
                plane, ns, {k: v for k, v in labels.items() if k != "substratus.ai/generation"}
            )
            assert pod["spec"]["nodeName"] == "kwok-cpu-0"
    finally:
        plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_gpu_jobs_land_only_on_nodes_of_their_type(
    operator: Proc, kwok_nodes: ControlPlane, bucket: str, tmp_path: Path
) -> None:
    plane = kwok_nodes
    ns = "gpu-placement"
    plane.kubectl("create", "namespace", ns)
    try:
        wanted = {
            "on-l4": ("nvidia-l4", 1, "kwok-l4-0"),
            "on-t4": ("nvidia-tesla-t4", 2, "kwok-t4-0"),
        }
        for name, (gpu_type, count, _) in wanted.items():
            precommit(bucket, ns, "Model", name, tmp_path)
            spec = {
                "image": {"name": "substratus.local/toolbox:latest"},
                "command": ["true"],
                "resources": {"gpu": {"type": gpu_type, "count": count}},
            }
            apply(plane, ns, "Model", name, spec)
        apply(
            plane,
            ns,
            "Model",
            "on-a100",
            {
                "image": {"name": "substratus.local/toolbox:latest"},
                "command": ["true"],
                "resources": {"gpu": {"type": "nvidia-a100", "count": 1}},
            },
        )
        for name, (gpu_type, count, node) in wanted.items():
            wait_for(plane, operator, ns, "Model", name, "Succeeded")
            pod = pod_of(plane, ns, {"substratus.ai/name": name})
            assert pod["spec"]["nodeName"] == node
            main = main_container(pod["spec"])
            assert main["resources"]["limits"]["nvidia.com/gpu"] == str(count)
            assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": gpu_type}
        stuck = wait_for(plane, operator, ns, "Model", "on-a100", "Unschedulable")
        ready = next(c for c in stuck["status"]["conditions"] if c["type"] == "Ready")
        assert "node(s) didn't match Pod's node affinity/selector" in ready["message"]
    finally:
        plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_spec_change_runs_the_model_again_and_retires_the_old_job(
    operator: Proc, kwok_nodes: ControlPlane, bucket: str, tmp_path: Path
) -> None:
    plane = kwok_nodes
    ns = "spec-change"
    plane.kubectl("create", "namespace", ns)
    try:
        first = precommit(bucket, ns, "Model", "m", tmp_path)
        spec = {"image": {"name": "substratus.local/toolbox:latest"}, "command": ["true"]}
        apply(plane, ns, "Model", "m", {**spec, "params": {"lr": 1}})
        assert wait_for(plane, operator, ns, "Model", "m", "Succeeded")["status"]["url"] == first
        # Only now: a Ready Model's other versions are pruned (the reconcile that follows the
        # status write is given a moment to pass).
        time.sleep(2)
        second = precommit(bucket, ns, "Model", "m", tmp_path, "g2-a1-k8s")
        apply(plane, ns, "Model", "m", {**spec, "params": {"lr": 2}})
        deadline = time.monotonic() + 60
        while True:
            m = json.loads(plane.kubectl("get", "model", "m", "-n", ns, "-o", "json").stdout)
            status = m.get("status") or {}
            if status.get("url") == second and status.get("observedGeneration") == 2:
                break
            assert time.monotonic() < deadline, f"never re-ran: {status}"
            time.sleep(0.3)
        job = json.loads(
            plane.kubectl("get", "job", "m-model-g2-a1", "-n", ns, "-o", "json").stdout
        )
        env = main_container(job["spec"]["template"]["spec"])["env"]
        assert {"name": "PARAM_LR", "value": "2"} in env
        while [j["metadata"]["name"] for j in get(plane, ns, "jobs")] != ["m-model-g2-a1"]:
            assert time.monotonic() < deadline, "the superseded Job stayed"
            time.sleep(0.3)
        # The superseded version is pruned, as locally.
        store = ArtifactStore(bucket)
        assert store.versions(store.object_url(ns, "models", "m")) == ["g2-a1-k8s"]
    finally:
        plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_params_too_large_for_a_pod_are_refused_naming_the_field(
    operator: Proc, kwok_nodes: ControlPlane
) -> None:
    plane = kwok_nodes
    ns = "big-params"
    plane.kubectl("create", "namespace", ns)
    try:
        spec = {
            "image": {"name": "substratus.local/toolbox:latest"},
            "command": ["true"],
            "params": {"prompt": "x" * 70_000},  # the API server takes it; a pod's annotation not
        }
        apply(plane, ns, "Model", "big", spec)
        got = wait_for(plane, operator, ns, "Model", "big", "SpecNotRunnable", timeout=60)
        ready = next(c for c in got["status"]["conditions"] if c["type"] == "Ready")
        assert ready["message"].startswith("spec.params: ")
        assert get(plane, ns, "jobs") == []
    finally:
        plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
