"""The operator's pure parts: its configuration, the children it renders (the container contract
in a pod, requests, GPU placement by cloud), names within limits, and a run's state read back
from a Job and its pod."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import pytest

from substratus.api import parse_object
from substratus.core.actions import EnsureService, StartJob
from substratus.core.observed import Artifacts, DepState, Observed, Phase
from substratus.core.reconcile import decide
from substratus.core.world import MountSources
from substratus.runtimes.kubernetes import jobs, names, notebooks, pods, services
from substratus.runtimes.kubernetes.config import ConfigError, OperatorConfig, load_config
from substratus.runtimes.kubernetes.pods import COMMIT, INIT, MAIN

CFG = OperatorConfig(artifact_url="s3://bucket/sub", helper_image="helper:1", image_tag="0.1.0")


def model(spec: dict[str, Any], name: str = "ft", uid: str = "u-1") -> Any:
    return parse_object(
        {
            "apiVersion": "substratus.ai/v1",
            "kind": "Model",
            "metadata": {"name": name, "namespace": "team", "uid": uid, "generation": 2},
            "spec": spec,
        }
    )


FT = {
    "image": {"name": "substratusai/model-trainer-huggingface"},
    "baseModel": {"name": "base"},
    "trainingDataset": {"name": "data"},
    "params": {"epochs": 2, "lora": True},
    "env": {"HF_TOKEN": {"secretKeyRef": {"name": "hf", "key": "token"}}, "MODE": "fast"},
    "resources": {"cpu": 2, "memory": 8, "disk": 20, "gpu": {"type": "nvidia-l4", "count": 1}},
}
MOUNTS = MountSources(
    model=DepState(found=True, ready=True, url="s3://bucket/sub/team/models/base/g1-a1-k8s/"),
    data=DepState(found=True, ready=True, url="s3://bucket/sub/team/datasets/data/g1-a1-k8s/"),
)


def render(obj: Any, cfg: OperatorConfig = CFG) -> dict[str, Any]:
    action = StartJob(2, 3, obj.spec.image.name)
    return jobs.job_children(obj, action, cfg, MOUNTS, "s3://bucket/sub/team/models/ft/")


def containers(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = job["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["initContainers"] + spec["containers"]}


def test_a_fine_tune_job_carries_the_whole_contract() -> None:
    job = render(model(FT))
    assert job["metadata"]["name"] == "ft-model-g2-a3"
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert annotations["substratus.ai/params.json"] == '{\n  "epochs": 2,\n  "lora": true\n}\n'
    c = containers(job)
    main = c[MAIN]
    assert main["image"] == "docker.io/substratusai/model-trainer-huggingface:0.1.0"
    assert main["workingDir"] == "/content"
    # The built-in image's entrypoint, run under the static shell that records its exit code.
    assert main["command"][:2] == ["/substratus/bin/sh", "-c"]
    assert main["command"][-3:] == ["python", "-m", "substratus.workloads.trainer"]
    env = {e["name"]: e for e in main["env"]}
    assert env["PARAM_EPOCHS"]["value"] == "2" and env["PARAM_LORA"]["value"] == "true"
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["MODE"]["value"] == "fast" and env["OMP_NUM_THREADS"]["value"] == "2"
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert mounts["/content/model"]["readOnly"] and mounts["/content/data"]["readOnly"]
    assert mounts["/content/params.json"]["subPath"] == "params.json"
    assert main["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "20Gi"},
        "limits": {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "20Gi", "nvidia.com/gpu": "1"},
    }
    # The init container fetches both dependencies' committed versions.
    assert c[INIT]["image"] == "helper:1"
    assert f"{MOUNTS.model.url}=/fetch/model" in c[INIT]["args"]  # type: ignore[union-attr]
    assert f"{MOUNTS.data.url}=/fetch/data" in c[INIT]["args"]  # type: ignore[union-attr]
    # The committer stores artifacts/ as this attempt's own version, and serves its progress.
    assert c[COMMIT]["args"][-6:] == [
        "--to",
        "s3://bucket/sub/team/models/ft/",
        "--version",
        "g2-a3-k8s",
        "--progress-port",
        "8090",
    ]
    assert c[COMMIT]["ports"] == [{"name": "progress", "containerPort": 8090}]
    spec = job["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["restartPolicy"] == "Never"


def test_the_versions_a_pod_fetches_are_read_back_from_its_spec() -> None:
    job = render(model(FT))
    assert pods.fetched_urls(job["spec"]["template"]["spec"]) == [
        "s3://bucket/sub/team/models/base/g1-a1-k8s/",
        "s3://bucket/sub/team/datasets/data/g1-a1-k8s/",
    ]
    assert pods.fetched_urls({"containers": []}) == []


@pytest.mark.parametrize(
    ("cloud", "selector"),
    [
        ("gke", {"cloud.google.com/gke-accelerator": "nvidia-l4"}),
        ("eks", {"karpenter.k8s.aws/instance-gpu-name": "l4"}),
        ("aks", {"kubernetes.azure.com/accelerator": "nvidia"}),
    ],
)
def test_gpu_placement_follows_the_cloud_profile(cloud: str, selector: dict[str, str]) -> None:
    cfg = OperatorConfig(artifact_url="s3://b", helper_image="h", cloud=cloud)
    spec = render(model(FT), cfg)["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == selector
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]


@pytest.mark.parametrize("cloud", ["generic", "aks"])
def test_a_type_label_names_the_gpu_type_where_the_profile_cannot(cloud: str) -> None:
    cfg = OperatorConfig(
        artifact_url="s3://b", helper_image="h", cloud=cloud, gpu_type_label="example.com/gpu"
    )
    spec = render(model(FT), cfg)["spec"]["template"]["spec"]
    assert spec["nodeSelector"]["example.com/gpu"] == "nvidia-l4"


def test_no_gpu_no_placement_and_no_requests() -> None:
    job = render(model({"image": {"name": "busybox"}, "command": ["true"]}))
    spec = job["spec"]["template"]["spec"]
    assert "nodeSelector" not in spec and containers(job)[MAIN]["resources"] == {}
    assert containers(job)[MAIN]["image"] == "busybox"  # not a built-in name: as written


def test_an_image_without_a_command_cannot_run_and_says_why() -> None:
    with pytest.raises(pods.CannotRun, match=r"spec\.command: required for image 'busybox'"):
        pods.workload_argv(model({"image": {"name": "busybox"}}), "busybox")
    with pytest.raises(pods.CannotRun, match=r"spec\.command"):
        pods.workload_argv(model({"image": {"name": "substratusai/base"}}), "substratusai/base")


def test_child_names_stay_within_limits_and_apart() -> None:
    long_a, long_b = "a" * 62 + "x", "a" * 62 + "y"  # names may be 63 long
    a = names.child_name(model(FT, name=long_a), "g1-a1")
    b = names.child_name(model(FT, name=long_b), "g1-a1")
    assert len(a) <= 63 and len(b) <= 63 and a != b and a.endswith("-g1-a1")
    assert len(names.labels(model(FT, name=long_a))[names.LABEL_NAME]) <= 63


def notebook(spec: dict[str, Any]) -> Any:
    return parse_object(
        {
            "apiVersion": "substratus.ai/v1",
            "kind": "Notebook",
            "metadata": {"name": "nb", "namespace": "team", "uid": "u-2", "generation": 1},
            "spec": spec,
        }
    )


def test_a_notebook_runs_jupyter_on_its_home_volume_with_its_token() -> None:
    nb = notebook({"image": {"name": "substratusai/notebook"}, "model": {"name": "base"}})
    cfg = OperatorConfig(artifact_url="s3://b", helper_image="h", notebook_storage_class="fast")
    action = EnsureService(generation=1, image="substratusai/notebook", replicas=1)
    deploy, service = services.service_children(nb, action, cfg, MOUNTS)
    spec = deploy["spec"]["template"]["spec"]
    main = next(c for c in spec["containers"] if c["name"] == MAIN)
    assert main["image"] == "docker.io/substratusai/notebook:latest"
    assert main["command"][-3:] == ["python", "-m", "substratus.workloads.notebook"]
    env = {e["name"]: e for e in main["env"]}
    assert env["PORT"]["value"] == "8888"
    assert env["NOTEBOOK_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "nb-notebook-token", "key": "token"}
    }
    assert main["readinessProbe"]["httpGet"] == {"path": "/api", "port": 8888}
    content = next(v for v in spec["volumes"] if v["name"] == "content")
    assert content == {
        "name": "content",
        "persistentVolumeClaim": {"claimName": "nb-notebook-home"},
    }
    assert {"name": "model", "mountPath": "/content/model", "readOnly": True} in main[
        "volumeMounts"
    ]
    assert spec["securityContext"]["fsGroup"] == 10001
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    assert service["spec"]["ports"][0]["port"] == 8888
    assert services.service_url(nb) == "http://nb-notebook-svc.team.svc.cluster.local:8888"

    claim = notebooks.home_claim(nb, cfg)
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "u-2"
    sized_nb = notebook({"image": {"name": "substratusai/notebook"}, "resources": {"disk": 3}})
    sized = notebooks.home_claim(sized_nb, OperatorConfig(artifact_url="s3://b", helper_image="h"))
    assert sized["spec"]["resources"]["requests"]["storage"] == "3Gi"
    assert "storageClassName" not in sized["spec"]  # the cluster's default class

    secret = notebooks.token_secret(nb, "t0k")
    assert secret["stringData"] == {"token": "t0k"}
    assert notebooks.secret_token({"token": base64.b64encode(b"t0k").decode()}) == "t0k"
    assert notebooks.secret_token(None) is None


def job(conditions: list[str] = (), **labels: str) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "metadata": {"labels": {names.LABEL_GENERATION: "2", names.LABEL_ATTEMPT: "3", **labels}},
        "status": {"conditions": [{"type": t, "status": "True"} for t in conditions]},
    }


def pod(main: dict[str, Any] | None = None, waiting: str | None = None) -> dict[str, Any]:
    state = {"terminated": main} if main else {"waiting": {"reason": waiting}} if waiting else {}
    return {"status": {"containerStatuses": [{"name": MAIN, "image": "img", "state": state}]}}


ART = Artifacts(url="s3://b/v/", files=("a",), size=1)


def test_job_states() -> None:
    assert jobs.job_state(job(), pod(), None, "").phase == Phase.RUNNING
    committing = jobs.job_state(job(), pod({"exitCode": 0}), None, "")
    assert committing.phase == Phase.COMMITTING and committing.attempts == 3
    done = jobs.job_state(job(["Complete"]), pod({"exitCode": 0}), ART, "")
    assert (done.phase, done.artifacts, done.generation) == (Phase.SUCCEEDED, ART, 2)
    oom = jobs.job_state(job(), pod({"exitCode": 137, "reason": "OOMKilled"}), None, "tail")
    assert (oom.phase, oom.exit_code, oom.message, oom.log_tail) == (
        Phase.FAILED,
        137,
        "OOMKilled, exit code 137",
        "tail",
    )
    store_failed = jobs.job_state(job(["Failed"]), pod({"exitCode": 0}), None, "")
    assert store_failed.phase == Phase.FAILED and "storing its artifacts" in store_failed.message
    no_manifest = jobs.job_state(job(["Complete"]), pod({"exitCode": 0}), None, "")
    assert no_manifest.phase == Phase.FAILED


def test_image_pull_errors_are_named() -> None:
    assert jobs.image_error(pod(waiting="ImagePullBackOff")) == "img: ImagePullBackOff:"
    assert jobs.image_error(pod(waiting="ContainerCreating")) is None


def test_a_pod_that_cannot_run_yet_says_why_and_the_model_waits_with_it() -> None:
    unschedulable = {
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 node(s) didn't match selector.",
                }
            ]
        }
    }
    state = jobs.job_state(job(), unschedulable, None, "")
    assert state.phase == Phase.RUNNING
    assert state.waiting == (
        "Unschedulable",
        "0/3 nodes are available: 3 node(s) didn't match selector.",
    )
    obj = model({"image": {"name": "busybox"}, "command": ["true"]})
    obs = Observed(now=0.0, job=replace(state, generation=2))
    ready = next(c for c in decide(obj, obs).status.conditions if c.type == "Ready")
    assert ready.reason == "Unschedulable" and "didn't match selector" in ready.message
    config = pod(waiting="CreateContainerConfigError")
    assert jobs.pod_waiting(config) == ("CreateContainerConfigError", "main:")
    assert jobs.pod_waiting(pod(waiting="ContainerCreating")) is None


def test_config_names_what_is_missing_or_wrong(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=r"SUBSTRATUS_ARTIFACT_URL.*SUBSTRATUS_HELPER_IMAGE"):
        load_config({})
    base = {"SUBSTRATUS_ARTIFACT_URL": "s3://b/x/", "SUBSTRATUS_HELPER_IMAGE": "h"}
    with pytest.raises(ConfigError, match="SUBSTRATUS_CLOUD: 'azure'"):
        load_config({**base, "SUBSTRATUS_CLOUD": "azure"})
    with pytest.raises(ConfigError, match="SUBSTRATUS_IMAGES: not built-in images: nope"):
        load_config({**base, "SUBSTRATUS_IMAGES": '{"nope": "x"}'})
    with pytest.raises(ConfigError, match="SUBSTRATUS_NOTEBOOK_HOME_SIZE: '10 GB'"):
        load_config({**base, "SUBSTRATUS_NOTEBOOK_HOME_SIZE": "10 GB"})
    file = tmp_path / "config.yaml"
    file.write_text("cloud: gke\nimages: {substratusai/base: reg/base:1}\nnamespaces: a, b\n")
    cfg = load_config({**base, "SUBSTRATUS_OPERATOR_CONFIG": str(file), "AWS_REGION": "x"})
    assert (cfg.cloud, cfg.namespaces, cfg.artifact_url) == ("gke", ("a", "b"), "s3://b/x")
    assert cfg.image("substratusai/base") == "reg/base:1"
    assert (
        cfg.image("substratusai/model-server-basaran")
        == "docker.io/substratusai/model-server:latest"
    )
    assert cfg.credentials == {"AWS_REGION": "x"}


def test_cluster_flags_may_come_anywhere_as_with_kubectl() -> None:
    from substratus.cli.main import hoist_cluster_flags

    assert hoist_cluster_flags(["get", "models", "--context", "prod", "-n", "x"]) == [
        "--context",
        "prod",
        "get",
        "models",
        "-n",
        "x",
    ]
    assert hoist_cluster_flags(["logs", "model/m", "--kubeconfig=k", "--", "--context"]) == [
        "--kubeconfig",
        "k",
        "logs",
        "model/m",
        "--",
        "--context",
    ]


def test_params_too_large_for_a_pod_are_refused_naming_the_field() -> None:
    big = model({"image": {"name": "busybox"}, "command": ["true"], "params": {"b": "x" * 70000}})
    with pytest.raises(pods.CannotRun, match=r"spec\.params: \d+ bytes as params\.json"):
        pods.params_annotation(big)
    spec = render(model(FT))["spec"]["template"]["spec"]
    params = next(v for v in spec["volumes"] if v["name"] == "params")
    assert params["downwardAPI"]["items"][0]["path"] == "params.json"
