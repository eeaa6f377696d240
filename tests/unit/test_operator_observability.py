"""What the operator tells its watchers: Prometheus metrics of its reconciles (scraped over real
HTTP and read with Prometheus' own parser), liveness and readiness, log lines that name the
object (text and JSON), and the settings behind them; and workload identity in the pods it
renders (the chart's cloud profiles set these keys)."""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from substratus.core.actions import EnsureService
from substratus.runtimes.kubernetes import builds, logs, services
from substratus.runtimes.kubernetes.config import ConfigError, OperatorConfig, load_config
from substratus.runtimes.kubernetes.metrics import ProbeServer
from substratus.runtimes.kubernetes.operator import Operator
from substratus.runtimes.kubernetes.pods import workload_service_account
from tests.prometheus import get, sample
from tests.unit.test_kube_children import FT, MOUNTS, model, notebook, render


def test_reconciles_are_counted_timed_and_served(tmp_path: Path) -> None:
    cfg = OperatorConfig(artifact_url=f"file://{tmp_path}", helper_image="h", workers=1)
    op = Operator(None, cfg)  # type: ignore[arg-type]  # reconcile is replaced below
    outcomes = {"ok": "ok", "lost": "conflict", "broken": "error"}
    done = threading.Event()

    def reconcile(key: Any) -> None:
        if key[2] == "broken":
            raise RuntimeError("the API server went away")
        if key[2] == "lost":
            op._local.conflict = True  # as _patch does on a 409
        if key[2] == "ok":
            done.set()

    op.reconcile = reconcile  # type: ignore[method-assign]
    ready = {"problem": "no answer yet"}
    probes = ProbeServer(op.metrics, live=op.alive, ready=lambda: ready["problem"])
    port = probes.serve("127.0.0.1", 0)
    try:
        assert get(port, "/readyz") == (503, "no answer yet\n")
        ready["problem"] = None
        assert get(port, "/readyz") == (200, "ok\n")
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/nope")[0] == 404
        for name in ("broken", "lost", "ok"):
            op.queue.add(("Model", "ns", name))
        assert sample(get(port, "/metrics")[1], "substratus_operator_queue_depth") == 3
        op.start()
        assert done.wait(10)
        op.stop()
        status, text = get(port, "/metrics")
    finally:
        probes.close()
    assert status == 200
    for name, result in outcomes.items():
        got = sample(text, "substratus_operator_reconciles_total", kind="Model", result=result)
        assert got == 1, (name, text)
    errors = sample(text, "substratus_operator_errors_total", kind="Model", error="RuntimeError")
    assert errors == 1
    timed = sample(text, "substratus_operator_reconcile_duration_seconds_count", kind="Model")
    assert timed == 3
    assert sample(text, "substratus_operator_objects", kind="Server") == 0


def test_a_dead_worker_fails_liveness(tmp_path: Path) -> None:
    cfg = OperatorConfig(artifact_url=f"file://{tmp_path}", helper_image="h", workers=1)
    op = Operator(None, cfg)  # type: ignore[arg-type]
    assert op.alive() is None
    op.start()
    op.stop()  # the queue closes: the worker returns, as one that died would be gone
    assert op.alive() == "stopped: reconcile-0"


def records(fmt: str) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.ObjectFilter())
    fmts = {"json": logs.JSONFormatter(), "text": logging.Formatter(logs.TEXT_FORMAT)}
    handler.setFormatter(fmts[fmt])
    log = logging.getLogger("substratus.test-logs")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("outside")
        with logs.about(("Model", "team", "llama")):
            log.warning("created Job %s", "llama-g1-a1")
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("failed")
        log.warning("after")
    finally:
        log.removeHandler(handler)
    return out.getvalue()


def test_log_lines_name_the_object_being_reconciled() -> None:
    text = records("text").splitlines()
    assert text[0].endswith("WARNING substratus.test-logs: outside")
    assert text[1].endswith("substratus.test-logs [Model team/llama]: created Job llama-g1-a1")
    assert "ValueError: boom" in "\n".join(text)
    assert text[-1].endswith("substratus.test-logs: after")

    lines = [json.loads(line) for line in records("json").splitlines()]
    assert [x["message"] for x in lines] == [
        "outside",
        "created Job llama-g1-a1",
        "failed",
        "after",
    ]
    assert "kind" not in lines[0] and "kind" not in lines[3]
    assert (lines[1]["kind"], lines[1]["namespace"], lines[1]["name"]) == ("Model", "team", "llama")
    assert lines[1]["level"] == "WARNING" and lines[1]["logger"] == "substratus.test-logs"
    assert "ValueError: boom" in lines[2]["exception"]


def test_observability_and_identity_settings(tmp_path: Path) -> None:
    base = {"SUBSTRATUS_ARTIFACT_URL": "s3://b", "SUBSTRATUS_HELPER_IMAGE": "h"}
    cfg = load_config(base)
    assert (cfg.metrics_listen, cfg.log_format) == ("0.0.0.0:8081", "text")
    with pytest.raises(ConfigError, match="SUBSTRATUS_LOG_FORMAT: 'xml'"):
        load_config({**base, "SUBSTRATUS_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match="SUBSTRATUS_METRICS_LISTEN: '8081' is not host:port"):
        load_config({**base, "SUBSTRATUS_METRICS_LISTEN": "8081"})
    file = tmp_path / "config.yaml"
    file.write_text(
        "metrics_listen: ''\n"
        "workload_service_account: substratus-workload\n"
        "workload_service_account_annotations: {azure.workload.identity/client-id: abc}\n"
        "workload_pod_labels: {azure.workload.identity/use: 'true'}\n"
    )
    cfg = load_config({**base, "SUBSTRATUS_OPERATOR_CONFIG": str(file)})
    assert cfg.metrics_listen == ""  # not served
    assert cfg.workload_service_account == "substratus-workload"
    assert cfg.workload_pod_labels == {"azure.workload.identity/use": "true"}


def test_workload_pods_run_as_the_identity_they_are_given() -> None:
    cfg = OperatorConfig(
        artifact_url="s3://b",
        helper_image="h",
        cloud="aks",
        workload_service_account="substratus-workload",
        workload_service_account_annotations={"azure.workload.identity/client-id": "abc"},
        workload_pod_labels={"azure.workload.identity/use": "true"},
    )
    job = render(model(FT), cfg)
    template = job["spec"]["template"]
    assert template["spec"]["serviceAccountName"] == "substratus-workload"
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert "azure.workload.identity/use" not in job["metadata"]["labels"]
    nb = notebook({"image": {"name": "substratusai/notebook"}})
    action = EnsureService(generation=1, image="substratusai/notebook", replicas=1)
    deploy, _ = services.service_children(nb, action, cfg, MOUNTS)
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "substratus-workload"
    assert "azure.workload.identity/use" not in deploy["spec"]["selector"]["matchLabels"]
    account = workload_service_account("team", cfg)
    assert account["metadata"] == {
        "name": "substratus-workload",
        "namespace": "team",
        "annotations": {"azure.workload.identity/client-id": "abc"},
    }
    assert builds.service_account("team", cfg)["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": "abc"
    }
    # Without an identity, pods keep the namespace's default account.
    plain = OperatorConfig(artifact_url="s3://b", helper_image="h")
    assert "serviceAccountName" not in render(model(FT), plain)["spec"]["template"]["spec"]
    assert "annotations" not in builds.service_account("team", plain)["metadata"]
