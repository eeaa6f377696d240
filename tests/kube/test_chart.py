"""The Helm chart with the real helm: lint, render with each cloud profile, a server-side dry run
of every rendering against the real API server (admission, schemas, RBAC objects), the errors a
user gets for bad values, and deploy/operator/ being the chart's own rendering (so the RBAC
that the operator's tests run under, deploy/operator/rbac.yaml, is the chart's)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.chart import CHART, KUBE, find, helm, helm_binary, template
from tests.kube.cluster import REPO, ControlPlane

pytestmark = pytest.mark.integration

BUCKET = {"artifactURL": "s3://models/substratus"}
PROFILES: dict[str, dict[str, Any]] = {
    "generic": {**BUCKET, "bucket": {"credentialsSecret": "bucket-keys"}},
    "gke": {
        "artifactURL": "gs://models/substratus",
        "cloud": "gke",
        "identity": {"gcpServiceAccount": "substratus@project.iam.gserviceaccount.com"},
        "builds": {"registry": "us-docker.pkg.dev/project/substratus"},
    },
    "eks": {
        **BUCKET,
        "cloud": "eks",
        "identity": {"awsRoleArn": "arn:aws:iam::123456789012:role/substratus"},
        "builds": {"registry": "123456789012.dkr.ecr.us-east-1.amazonaws.com/substratus"},
    },
    "aks": {
        "artifactURL": "az://models/substratus",
        "cloud": "aks",
        "identity": {"azureClientId": "00000000-1111-2222-3333-444444444444"},
        "builds": {"registry": "substratus.azurecr.io", "registryAuthSecret": "acr-push"},
        "uploads": {"endpoint": "https://uploads.example.com"},
        "operator": {"replicas": 2, "logFormat": "json"},
    },
}


def config_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config = yaml.safe_load(find(docs, "ConfigMap")["data"]["config.yaml"])
    assert isinstance(config, dict)
    return config


def test_the_chart_lints_strictly() -> None:
    for values in PROFILES.values():
        args = [f"--set={k}={v}" for k, v in values.items() if isinstance(v, str)]
        r = helm("lint", "--strict", str(CHART), *args, *KUBE)
        assert "0 chart(s) failed" in r.stdout, r.stdout


def test_the_chart_follows_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["version"] == chart["appVersion"] == package


@pytest.mark.parametrize("profile", list(PROFILES))
def test_each_cloud_profile_renders_what_that_cloud_needs(profile: str) -> None:
    docs = template(PROFILES[profile])
    config = config_of(docs)
    assert config["cloud"] == profile
    assert config["artifact_url"] == PROFILES[profile]["artifactURL"]
    deployment = find(docs, "Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert container["image"] == "docker.io/substratusai/operator:0.1.0"
    assert config["helper_image"] == container["image"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert config["metrics_listen"] == "0.0.0.0:8081"
    account = find(docs, "ServiceAccount")
    annotations = account["metadata"].get("annotations") or {}
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    if profile == "generic":
        assert annotations == {}
        assert "workload_service_account" not in config
        assert container["envFrom"] == [{"secretRef": {"name": "bucket-keys"}}]
        assert not pdbs  # one replica: a budget would only block drains
    elif profile == "gke":
        want = {"iam.gke.io/gcp-service-account": "substratus@project.iam.gserviceaccount.com"}
        assert annotations == want
        assert config["workload_service_account"] == "substratus-workload"
        assert config["workload_service_account_annotations"] == want
        assert "envFrom" not in container  # no keys: the identity reads the bucket
    elif profile == "eks":
        want = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/substratus"}
        assert annotations == want
        assert config["workload_service_account_annotations"] == want
    else:  # aks: Azure Workload Identity needs the pod label too, on ours and on workloads
        want = {"azure.workload.identity/client-id": "00000000-1111-2222-3333-444444444444"}
        assert annotations == want
        assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        assert config["workload_pod_labels"] == {"azure.workload.identity/use": "true"}
        assert config["registry_auth_file"] == "/etc/substratus-registry/config.json"
        assert config["upload_endpoint"] == "https://uploads.example.com"
        assert config["log_format"] == "json"
        find(docs, "Service", "substratus-uploads")
        key = find(docs, "Secret", "substratus-operator-upload-key")
        assert len(key["data"]["SUBSTRATUS_UPLOAD_KEY"]) >= 40
        assert pdbs and pdbs[0]["spec"]["minAvailable"] == 1
    # The CRDs come with the chart, kept on uninstall.
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert sorted(c["metadata"]["name"] for c in crds) == [
        "datasets.substratus.ai",
        "models.substratus.ai",
        "notebooks.substratus.ai",
        "servers.substratus.ai",
    ]
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in crds)


def test_the_operator_reads_the_rendered_config(tmp_path: Path) -> None:
    """Each profile's config.yaml loads in the operator's own config reader."""
    from substratus.runtimes.kubernetes.config import load_config

    for profile, values in PROFILES.items():
        path = tmp_path / f"{profile}.yaml"
        path.write_text(find(template(values), "ConfigMap")["data"]["config.yaml"])
        env = {"SUBSTRATUS_OPERATOR_CONFIG": str(path)}
        if profile == "aks":  # the Secrets the pod would mount and read
            auth = tmp_path / "config.json"
            auth.write_text('{"auths": {}}')
            env.update(SUBSTRATUS_UPLOAD_KEY="k" * 40, SUBSTRATUS_REGISTRY_AUTH_FILE=str(auth))
        cfg = load_config(env)
        assert cfg.cloud == profile


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({}, "artifactURL: required"),
        ({"artifactURL": "models/substratus"}, "artifactURL"),
        ({**BUCKET, "cloud": "gcp"}, "cloud"),
        ({**BUCKET, "identity": {"awsRoleArn": "my-role"}}, "awsRoleArn"),
        ({**BUCKET, "operator": {"logFormat": "xml"}}, "logFormat"),
        ({**BUCKET, "bucket": {"secret": "x"}}, "secret"),
    ],
)
def test_bad_values_fail_naming_the_value(
    values: dict[str, Any], error: str, tmp_path: Path
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    r = helm("template", "substratus", str(CHART), "-f", str(path), *KUBE, check=False)
    assert r.returncode != 0
    assert error in r.stderr, r.stderr


def test_every_profile_passes_a_server_side_dry_run(
    kube_control_plane: ControlPlane, substratus_crds: list[str]
) -> None:
    plane = kube_control_plane
    plane.kubectl("create", "namespace", "substratus-dryrun", check=False)
    for profile, values in PROFILES.items():
        docs = template(values, release="dryrun", namespace="substratus-dryrun")
        text = "\n---\n".join(yaml.safe_dump(d) for d in docs)
        r = plane.kubectl(
            "apply",
            "--dry-run=server",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
            input=text,
            check=False,
        )
        assert r.returncode == 0, f"{profile}: {r.stderr}"
        assert "deployment.apps/dryrun-substratus-operator serverside-applied" in r.stdout


def test_deploy_operator_is_the_charts_rendering() -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "hack" / "render_deploy.py"), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "HELM": str(helm_binary())},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rbac = [d for d in yaml.safe_load_all((REPO / "deploy/operator/rbac.yaml").read_text()) if d]
    role = find(rbac, "ClusterRole")
    chart_role = find(template(BUCKET), "ClusterRole")
    assert role["rules"] == chart_role["rules"]
