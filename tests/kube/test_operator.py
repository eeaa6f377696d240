"""The operator (runtimes/kubernetes) as a process against the real control plane, with only the
permissions of deploy/operator/rbac.yaml (a token of its ServiceAccount): Models run as Jobs on
the real node, with the container contract, artifacts committed to a real S3-compatible bucket
(SeaweedFS) and the status written from the committed manifest; a Server serves through its
Service.

The contract's helper image is our operator image (the project, the bucket libraries and a
static busybox); workloads run the toolbox image; images are imported, so the operator is
configured with ``imagePullPolicy: Never``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube.cluster import REPO, ControlPlane, Proc
from tests.kube.node import TOOLBOX_IMAGE, RealNode
from tests.kube.operatorproc import (
    apply,
    node_settings,
    read,
    running_operator,
    sub_open,
    wait_for,
)
from tests.kube.registry import LocalRegistry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def operator(
    kube_node: RealNode,
    substratus_crds: list[str],
    operator_image: str,
    node_bucket: Any,
    local_registry: LocalRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proc]:
    settings = node_settings(
        node_bucket,
        operator_image,
        SUBSTRATUS_INSECURE_REGISTRIES=local_registry.address,
        SUBSTRATUS_JOB_ATTEMPTS="2",
        SUBSTRATUS_BACKOFF_SECONDS="1",
    )
    with running_operator(kube_node.plane, tmp_path_factory.mktemp("operator"), settings) as proc:
        yield proc


def test_a_model_runs_as_a_job_on_the_real_node_and_commits_its_artifacts(
    operator: Proc, kube_node: RealNode, node_bucket: Any, kube_namespace: str
) -> None:
    plane, ns = kube_node.plane, kube_namespace
    base = {
        "image": {"name": TOOLBOX_IMAGE},
        "command": ["sh", "-c", "mkdir -p artifacts/sub && echo weights > artifacts/sub/w.bin"],
    }
    apply(plane, ns, "Model", "base", base)
    script = (
        'echo "$PARAM_GREETING" > artifacts/greeting.txt && cp params.json artifacts/ '
        "&& cat model/sub/w.bin > artifacts/from-base.txt && pwd > artifacts/pwd.txt "
        "&& (touch model/x 2> /dev/null && echo writable || echo read-only) "
        "> artifacts/model-ro.txt"
    )
    tuned = {
        "image": {"name": TOOLBOX_IMAGE},
        "command": ["sh", "-c", script],
        "baseModel": {"name": "base"},
        "params": {"greeting": "hello from a pod"},
    }
    apply(plane, ns, "Model", "tuned", tuned)
    done = wait_for(plane, operator, ns, "Model", "tuned", "Succeeded")
    status = done["status"]
    assert status["ready"] is True and status["observedGeneration"] == 1
    url = status["url"]
    assert url == f"s3://artifacts/{ns}/models/tuned/g1-a1-k8s/"
    assert sorted(status["files"]) == [
        "from-base.txt",
        "greeting.txt",
        "model-ro.txt",
        "params.json",
        "pwd.txt",
    ]
    assert read(node_bucket, url + "greeting.txt") == b"hello from a pod\n"
    assert json.loads(read(node_bucket, url + "params.json")) == {"greeting": "hello from a pod"}
    assert read(node_bucket, url + "from-base.txt") == b"weights\n"  # fetched from base's commit
    assert read(node_bucket, url + "pwd.txt") == b"/content\n"
    assert read(node_bucket, url + "model-ro.txt") == b"read-only\n"
    manifest = json.loads(read(node_bucket, url + "substratus-manifest.json"))
    assert manifest["totalSize"] == sum(f["size"] for f in manifest["files"])
    # It ran for real: on the real node, its Job complete, one Job for one attempt.
    pods = json.loads(plane.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    assert {p["spec"]["nodeName"] for p in pods} == {kube_node.name}
    jobs = json.loads(plane.kubectl("get", "jobs", "-n", ns, "-o", "json").stdout)["items"]
    assert sorted(j["metadata"]["name"] for j in jobs) == ["base-model-g1-a1", "tuned-model-g1-a1"]


def test_a_failing_job_is_retried_then_fails_with_its_exit_code_and_log(
    operator: Proc, kube_node: RealNode, kube_namespace: str
) -> None:
    plane, ns = kube_node.plane, kube_namespace
    spec = {"image": {"name": TOOLBOX_IMAGE}, "command": ["sh", "-c", "echo broken-input; exit 3"]}
    apply(plane, ns, "Dataset", "bad", spec)
    failed = wait_for(plane, operator, ns, "Dataset", "bad", "JobFailed")
    ready = next(c for c in failed["status"]["conditions"] if c["type"] == "Ready")
    assert "exit code 3 after 2 attempts" in ready["message"]
    assert "broken-input" in ready["message"]  # the log tail
    assert failed["status"].get("url") is None


def test_an_image_without_a_command_runs_its_entrypoint_from_its_registry(
    operator: Proc,
    kube_node: RealNode,
    local_registry: LocalRegistry,
    node_bucket: Any,
    kube_namespace: str,
    tmp_path: Path,
) -> None:
    plane, ns = kube_node.plane, kube_namespace
    # An image whose ENTRYPOINT writes an artifact, pushed to the registry the node pulls from.
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    ref = f"{local_registry.address}/tests/entry:v1"
    entrypoint = ["/bin/sh", "-c", "echo from-the-image > artifacts/out.txt"]
    archive = tmp_path / "entry.tar"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "hack" / "ociarchive.py"),
            str(root),
            str(archive),
            ref,
            "--entrypoint",
            json.dumps(entrypoint),
        ],
        check=True,
    )
    kube_node.load_image(archive)
    kube_node.ctr("images", "push", "--plain-http", ref)
    apply(plane, ns, "Model", "entry", {"image": {"name": ref}})
    done = wait_for(plane, operator, ns, "Model", "entry", "Succeeded")
    assert read(node_bucket, done["status"]["url"] + "out.txt") == b"from-the-image\n"
    job = plane.kubectl("get", "job", "entry-model-g1-a1", "-n", ns, "-o", "json")
    spec = json.loads(job.stdout)["spec"]["template"]["spec"]
    main = next(c for c in spec["containers"] if c["name"] == "main")
    assert main["command"][4:] == entrypoint

    # An image whose registry cannot be read: refused, naming the field.
    apply(plane, ns, "Model", "nocmd", {"image": {"name": TOOLBOX_IMAGE}})
    got = wait_for(plane, operator, ns, "Model", "nocmd", "ImageUnavailable", timeout=60)
    ready = next(c for c in got["status"]["conditions"] if c["type"] == "Ready")
    assert ready["message"].startswith("spec.command: not given, and the command of image")


def test_delete_removes_the_artifacts_unless_retained(
    operator: Proc, kube_node: RealNode, node_bucket: Any, kube_namespace: str
) -> None:
    plane, ns = kube_node.plane, kube_namespace
    spec = {"image": {"name": TOOLBOX_IMAGE}, "command": ["sh", "-c", "echo x > artifacts/x"]}
    for name in ("gone", "kept"):
        apply(plane, ns, "Model", name, spec)
    plane.kubectl("annotate", "-n", ns, "model/kept", "substratus.ai/retain-artifacts=true")
    urls = {
        name: wait_for(plane, operator, ns, "Model", name, "Succeeded")["status"]["url"]
        for name in ("gone", "kept")
    }
    for name in ("gone", "kept"):
        plane.kubectl(
            "delete", "-n", ns, f"model/{name}", "--wait=true", "--timeout=60s", timeout=70
        )
    assert read(node_bucket, urls["kept"] + "x") == b"x\n"
    with pytest.raises(Exception, match="NoSuchKey"):
        read(node_bucket, urls["gone"] + "x")
    assert Path(operator.log).exists()


def test_a_server_serves_its_model_through_a_service(
    operator: Proc, kube_node: RealNode, kube_namespace: str
) -> None:
    plane, ns = kube_node.plane, kube_namespace
    model = {
        "image": {"name": TOOLBOX_IMAGE},
        "command": ["sh", "-c", "mkdir -p artifacts/sub && echo weights > artifacts/sub/w.bin"],
    }
    apply(plane, ns, "Model", "m", model)
    # busybox httpd serves the mounted model: /model/saved (the design's path) and model/.
    serve = (
        "mkdir -p /tmp/www && cp -r /model/saved/. /tmp/www/ && echo up > /tmp/www/index.html "
        "&& exec httpd -f -p $PORT -h /tmp/www"
    )
    server = {
        "image": {"name": TOOLBOX_IMAGE},
        "command": ["sh", "-c", serve],
        "model": {"name": "m"},
        "replicas": 2,
    }
    apply(plane, ns, "Server", "s", server)
    served = wait_for(plane, operator, ns, "Server", "s", "Serving")
    assert served["status"]["url"] == f"http://s-server-svc.{ns}.svc.cluster.local:8080"
    ip = plane.kubectl("get", "svc", "-n", ns, "s-server-svc", "-o", "jsonpath={.spec.clusterIP}")
    url = f"http://{ip.stdout}:8080/sub/w.bin"
    deadline = time.monotonic() + 30
    while True:  # kube-proxy programs the Service's rules a moment after the pods are Ready
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                assert r.read() == b"weights\n"
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    deploy = json.loads(plane.kubectl("get", "deploy", "-n", ns, "-o", "json").stdout)["items"]
    assert [d["spec"]["replicas"] for d in deploy] == [2]

    # `sub open server/s`: a port-forward to a replica, and its /docs URL, until Ctrl-C.
    with sub_open(plane, ns, "server/s") as page:
        assert page.endswith("/docs"), page
        with urllib.request.urlopen(page.removesuffix("docs") + "sub/w.bin", timeout=10) as r:
            assert r.read() == b"weights\n"  # the replica, through the forward


def test_a_jobs_progress_reaches_its_status_on_the_real_node(
    operator: Proc, kube_node: RealNode, kube_namespace: str
) -> None:
    plane, ns = kube_node.plane, kube_namespace
    report = '{"percent": 30, "step": 3, "total": 10, "metrics": {"loss": 0.25}}'
    script = f"printf '%s' '{report}' > progress.json; sleep 12; echo x > artifacts/x"
    apply(
        plane,
        ns,
        "Model",
        "slow",
        {"image": {"name": TOOLBOX_IMAGE}, "command": ["sh", "-c", script]},
    )
    deadline = time.monotonic() + 90
    while True:  # the helper serves it; the operator reads it through the API server
        got = plane.kubectl("get", "model", "slow", "-n", ns, "-o", "json").stdout
        status = json.loads(got).get("status") or {}
        if status.get("progress"):
            break
        assert time.monotonic() < deadline, f"no progress in status: {status}\n{operator.tail(30)}"
        time.sleep(0.5)
    assert status["progress"]["step"] == 3 and status["progress"]["metrics"] == {"loss": 0.25}
    assert status["ready"] is False  # seen while it runs
    done = wait_for(plane, operator, ns, "Model", "slow", "Succeeded")
    assert done["status"]["progress"]["percent"] == 30  # its last word stays


def sub(plane: ControlPlane, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [str(Path(sys.executable).parent / "sub"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **(env or {})},
    )


def test_sub_drives_the_cluster_with_the_same_verbs(
    operator: Proc, kube_node: RealNode, kube_namespace: str, tmp_path: Path
) -> None:
    plane, ns = kube_node.plane, kube_namespace
    manifest = tmp_path / "model.yaml"
    manifest.write_text(
        "apiVersion: substratus.ai/v1\nkind: Model\nmetadata: {name: hello}\n"
        "spec:\n  image: {name: " + TOOLBOX_IMAGE + "}\n"
        "  command: [sh, -c, 'echo said-hello; echo hi > artifacts/hi.txt']\n"
    )
    cluster = ["--kubeconfig", str(plane.kubeconfig), "--context", "substratus-test"]
    applied = sub(
        plane, *cluster, "apply", "-f", str(manifest), "-n", ns, "--wait", "--timeout", "3m"
    )
    assert applied.returncode == 0, applied.stderr + operator.tail(30)
    assert "model/hello created" in applied.stdout
    again = sub(plane, *cluster, "apply", "-f", str(manifest), "-n", ns)
    assert "model/hello unchanged" in again.stdout
    labelled = tmp_path / "labelled.yaml"
    labelled.write_text(
        manifest.read_text().replace("{name: hello}", "{name: hello, labels: {team: a}}")
    )
    relabelled = sub(plane, *cluster, "apply", "-f", str(labelled), "-n", ns)
    assert "model/hello configured" in relabelled.stdout, relabelled.stderr
    # A server-side dry run and a diff: the API server says what would change, nothing does.
    dry = sub(plane, *cluster, "apply", "-f", str(manifest), "-n", ns, "--dry-run=server")
    assert dry.stdout == "model/hello configured (server dry run)\n", dry.stderr
    diffed = sub(plane, *cluster, "diff", "-f", str(manifest), "-n", ns)
    assert diffed.returncode == 1 and "-    team: a" in diffed.stdout, diffed.stdout + diffed.stderr
    assert sub(plane, *cluster, "diff", "-f", str(labelled), "-n", ns).returncode == 0
    listed = sub(plane, "get", "models", "-n", ns, *cluster)  # flags anywhere, as with kubectl
    assert listed.returncode == 0 and "hello   true    Succeeded" in listed.stdout
    # The environment chooses the cluster too, as the README says.
    env = {"KUBECONFIG": str(plane.kubeconfig), "SUBSTRATUS_CONTEXT": "substratus-test"}
    described = sub(plane, "describe", "model/hello", "-n", ns, env=env)
    assert described.returncode == 0 and f"s3://artifacts/{ns}/models/hello/" in described.stdout
    logs = sub(plane, "logs", "model/hello", "-n", ns, env=env)
    assert logs.returncode == 0 and "said-hello" in logs.stdout
    # Selectors and output formats, as against the local runtime.
    named = sub(plane, "get", "models", "-n", ns, "-l", "team=a", "-o", "name", env=env)
    assert named.stdout == "model.substratus.ai/hello\n", named.stderr
    assert sub(plane, "get", "models", "-n", ns, "-l", "team=b", "-o", "name", env=env).stdout == ""
    path = "jsonpath={.items[*].metadata.name} {.items[0].status.files[0]}"
    assert sub(plane, "get", "models", "-n", ns, "-o", path, env=env).stdout == "hello hi.txt"
    waited = sub(plane, "wait", "models", "-l", "team", "-n", ns, "--timeout", "10s", env=env)
    assert waited.stdout == "model/hello condition met\n", waited.stderr
    happened = sub(plane, "events", "model/hello", "-n", ns, env=env)
    assert "Succeeded" in happened.stdout and "model/hello" in happened.stdout, happened.stderr
    described = sub(plane, "describe", "model/hello", "-n", ns, env=env).stdout
    assert "Succeeded" in described.split("Events:")[1]  # the Event the operator recorded
    version = sub(plane, "version", env=env)
    assert "Server Version: Kubernetes v1." in version.stdout, version.stderr
    missing = sub(plane, "get", "model/nope", "-n", ns, env=env)
    assert missing.returncode == 3 and 'models "nope" not found' in " ".join(missing.stderr.split())
    deleted = sub(plane, *cluster, "delete", "model/hello", "-n", ns)
    assert deleted.returncode == 0, deleted.stderr
    wrong = sub(plane, "--kubeconfig", str(plane.kubeconfig), "--context", "nope", "get", "models")
    said = " ".join(wrong.stderr.split())  # the console wraps long lines
    assert wrong.returncode == 6 and "no context 'nope' (it has: substratus-test)" in said
