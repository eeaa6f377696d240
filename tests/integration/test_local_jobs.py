"""Models and Datasets on the local runtime: real supervisor, real processes, real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from substratus.storage import MANIFEST_NAME
from tests.conftest import Local

pytestmark = pytest.mark.integration

BASE = {"name": "substratusai/base"}


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def local_dir(url: str) -> Path:
    return Path(url.removeprefix("file://"))


def test_model_job_follows_the_container_contract(local: Local) -> None:
    script = (
        "env | grep ^PARAM_ | sort > artifacts/env.txt; cp params.json artifacts/; "
        "mkdir -p artifacts/sub; printf 1234567890 > artifacts/sub/w.bin; echo done"
    )
    local.apply(
        "Model",
        "m",
        {
            "image": BASE,
            "command": sh(script),
            "params": {"name": "tiiuae/falcon-7b", "epochs": 2, "merge": True},
        },
    )
    obj = local.wait("Model", "m")
    status = obj["status"]
    assert sorted(status["files"]) == ["env.txt", "params.json", "sub/w.bin"]
    out = local_dir(status["url"])
    assert (out / "env.txt").read_text().splitlines() == [
        "PARAM_EPOCHS=2",
        "PARAM_MERGE=true",
        "PARAM_NAME=tiiuae/falcon-7b",
    ]
    assert json.loads((out / "params.json").read_text())["epochs"] == 2
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    sizes = {f["path"]: f["size"] for f in manifest["files"]}
    assert sizes["sub/w.bin"] == 10
    assert status["diskSize"] == str(sum(sizes.values()))
    assert b"done" in b"".join(local.client.logs("Model", "default", "m"))


def test_fine_tune_waits_for_dependencies_and_mounts_them_read_only(local: Local) -> None:
    check = (
        "test -f model/w.bin && test -f data/rows.jsonl || exit 9; "
        "if echo x >> model/w.bin 2>/dev/null; then exit 8; fi; "
        "cat model/w.bin data/rows.jsonl > artifacts/merged.txt"
    )
    local.apply(
        "Model",
        "ft",
        {
            "image": BASE,
            "command": sh(check),
            "baseModel": {"name": "base"},
            "trainingDataset": {"name": "data"},
        },
    )
    assert (
        local.reason(local.wait_reason("Model", "ft", "BaseModelNotFound")) == "BaseModelNotFound"
    )
    local.apply(
        "Model", "base", {"image": BASE, "command": sh("sleep 0.5; echo W > artifacts/w.bin")}
    )
    local.wait_reason("Model", "ft", "BaseModelNotReady")
    local.wait("Model", "base")
    local.wait_reason("Model", "ft", "DatasetNotFound")
    local.apply(
        "Dataset", "data", {"image": BASE, "command": sh("echo '{}' > artifacts/rows.jsonl")}
    )
    ft = local.wait("Model", "ft")
    assert (local_dir(ft["status"]["url"]) / "merged.txt").read_text() == "W\n{}\n"


def test_failed_job_retries_then_reports_exit_code_and_log_tail(local: Local) -> None:
    local.apply("Model", "bad", {"image": BASE, "command": sh("echo oh no >&2; exit 3")})
    obj = local.wait_reason("Model", "bad", "JobFailed")
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert "exit code 3" in ready["message"]
    assert "2 attempts" in ready["message"]
    assert "oh no" in ready["message"]
    assert obj["status"]["ready"] is False


def test_spec_change_reruns_and_a_failed_rerun_keeps_the_old_artifacts(local: Local) -> None:
    local.apply("Model", "m", {"image": BASE, "command": sh("echo v1 > artifacts/v")})
    first = local.wait("Model", "m")
    assert first["metadata"]["generation"] == 1
    again = local.apply("Model", "m", {"image": BASE, "command": sh("echo v1 > artifacts/v")})
    assert again["metadata"]["generation"] == 1  # unchanged spec: no re-run
    local.apply("Model", "m", {"image": BASE, "command": sh("echo v2 > artifacts/v")})
    second = local.wait("Model", "m")
    assert second["metadata"]["generation"] == 2
    assert (local_dir(second["status"]["url"]) / "v").read_text() == "v2\n"
    assert not local_dir(first["status"]["url"]).exists()  # the older version was pruned

    local.apply("Model", "m", {"image": BASE, "command": sh("echo partial > artifacts/v; exit 1")})
    failed = local.wait_reason("Model", "m", "JobFailed")
    assert failed["status"]["url"] == second["status"]["url"]
    assert (local_dir(second["status"]["url"]) / "v").read_text() == "v2\n"


def test_delete_removes_artifacts_unless_retained(local: Local) -> None:
    for name in ("gone", "kept"):
        local.apply("Dataset", name, {"image": BASE, "command": sh("echo x > artifacts/x")})
    gone, kept = local.wait("Dataset", "gone"), local.wait("Dataset", "kept")
    local.client.delete("Dataset", "default", "gone")
    local.client.delete("Dataset", "default", "kept", retain=True)
    assert not local_dir(gone["status"]["url"]).exists()
    assert (local_dir(kept["status"]["url"]) / "x").exists()
    assert local.client.list_objects("Dataset", None) == []


def test_secret_env_waits_for_the_secret(local: Local) -> None:
    spec = {
        "image": BASE,
        "command": sh('printf %s "$HF_TOKEN" > artifacts/t'),
        "env": {"HF_TOKEN": {"secretKeyRef": {"name": "hf", "key": "token"}}, "PLAIN": "p"},
    }
    local.apply("Model", "m", spec)
    obj = local.wait_reason("Model", "m", "SecretNotFound")
    assert "env.HF_TOKEN" in obj["status"]["conditions"][0]["message"]
    local.client.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hf"},
            "stringData": {"token": "s3cr3t"},
        }
    )
    done = local.wait("Model", "m")
    assert (local_dir(done["status"]["url"]) / "t").read_text() == "s3cr3t"


def test_foreign_image_without_engine_is_reported(local: Local) -> None:
    local.apply("Model", "m", {"image": {"name": "example.com/some/loader:1"}})
    obj = local.wait_reason("Model", "m", "ImageUnavailable")
    message = obj["status"]["conditions"][0]["message"]
    assert "example.com/some/loader:1" in message and "podman or docker" in message


def test_supervisor_killed_mid_job_adopts_the_job(local: Local) -> None:
    local.apply(
        "Model", "slow", {"image": BASE, "command": sh("sleep 1.5; echo ok > artifacts/ok")}
    )
    local.wait_reason("Model", "slow", "JobRunning")
    old = local.supervisor_pid()
    local.kill_supervisor()
    obj = local.wait("Model", "slow")  # the client starts a new supervisor on demand
    assert local.supervisor_pid() != old
    assert (local_dir(obj["status"]["url"]) / "ok").read_text() == "ok\n"
    runs = [r for r in (local.paths.home / "logs").rglob("*.log")]
    assert len(runs) == 1  # adopted, not started again


def test_a_retry_resumes_from_the_previous_attempts_artifacts(local: Local) -> None:
    script = (
        "if [ -f artifacts/checkpoint ]; then echo resumed > artifacts/out; "
        "rm artifacts/checkpoint; else echo step-1 > artifacts/checkpoint; exit 1; fi"
    )
    local.apply("Model", "r", {"image": BASE, "command": sh(script)})
    obj = local.wait("Model", "r")
    assert obj["status"]["files"] == ["out"]
    assert (local_dir(obj["status"]["url"]) / "out").read_text() == "resumed\n"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"command": ["echo", "a\0b"]}, "spec.command[1]: contains a NUL byte"),
        ({"command": ["true"], "env": {"BAD": "x\0y"}}, "spec.env.BAD: contains a NUL byte"),
        ({"command": ["echo", "x" * (130 * 1024)]}, "spec.command[1]: 133120 bytes"),
    ],
)
def test_command_that_cannot_be_executed_fails_with_the_field(
    local: Local, spec: dict[str, object], field: str
) -> None:
    local.apply("Model", "m", {"image": BASE, **spec})
    obj = local.wait_reason("Model", "m", "JobFailed")
    assert field in obj["status"]["conditions"][0]["message"]
    log = local.paths.supervisor_log.read_text() if local.paths.supervisor_log.exists() else ""
    assert "Traceback" not in log


def test_missing_program_is_named_in_the_log_tail(local: Local) -> None:
    local.apply("Model", "m", {"image": BASE, "command": ["no-such-program", "--flag"]})
    obj = local.wait_reason("Model", "m", "JobFailed")
    message = obj["status"]["conditions"][0]["message"]
    assert "no-such-program" in message and ".exit" not in message, message
