"""Bad input against a real supervisor and the real `sub`: clear errors, nothing lost, and the
supervisor's memory stays bounded throughout (its peak RSS is checked after every test)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from substratus.api.limits import MAX_DEPTH, MAX_REQUEST_BYTES
from tests.conftest import FAST_ENV, Local, _stop
from tests.integration.test_cli import sub
from tests.unit.test_bad_input import BOMB, OBJ

pytestmark = pytest.mark.integration

# Far above what these requests need (tens of MB), far below the gigabytes they cost before.
PEAK_RSS_LIMIT_KIB = 300 * 1024


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    """One supervisor for the whole module, so its peak RSS covers every bad request."""
    home = tmp_path_factory.mktemp("bad-input") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUBSTRATUS_HOME", str(home))
        for k, v in FAST_ENV.items():
            mp.setenv(k, v)
        env = Local(home)
        env.client.health()  # starts it
        try:
            yield env
        finally:
            _stop(env)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture(autouse=True)
def bounded_memory(local: Local) -> Iterator[None]:
    pid = local.supervisor_pid()
    yield
    assert local.supervisor_pid() == pid, "the supervisor restarted"
    peak = peak_rss_kib(pid)
    print(f"supervisor {pid} peak RSS (VmHWM): {peak / 1024:.1f} MiB")
    assert peak < PEAK_RSS_LIMIT_KIB


def post(local: Local, body: bytes) -> httpx.Response:
    """Raw bytes to the supervisor's /apply, as any client could send them."""
    local.client.health()  # started
    transport = httpx.HTTPTransport(uds=str(local.paths.socket))
    with httpx.Client(transport=transport, base_url="http://supervisor") as c:
        return c.post("/apply", content=body, headers={"Content-Type": "application/json"})


def model(name: str = "m", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "substratus.ai/v1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {"image": {"name": "substratusai/base"}, "command": ["true"], **spec},
    }


# --- the socket ----------------------------------------------------------------------------------


def test_oversized_request_is_413_and_read_no_further(local: Local) -> None:
    doc = model()
    doc["metadata"]["x"] = "y" * (MAX_REQUEST_BYTES + 1)
    r = post(local, json.dumps(doc).encode())
    assert r.status_code == 413 and r.json()["reason"] == "RequestEntityTooLarge"
    assert local.client.health()["ok"]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 50, 200_000])
def test_deep_json_is_a_client_error_not_a_500(local: Local, depth: int) -> None:
    body = json.dumps(model()).replace(
        '"name": "m"', '"name": "m", "x": ' + "[" * depth + "]" * depth
    )
    r = post(local, body.encode())
    assert r.status_code in (400, 422), r.text
    assert f"deeper than {MAX_DEPTH} levels" in r.json()["message"]


def test_widest_json_within_the_limits_is_cheap(local: Local) -> None:
    # What an alias bomb becomes once a client expands it: as many values as the request
    # limit lets through. Refused by size, and the peak-RSS check above bounds its cost.
    doc = model("wide")
    doc["metadata"]["x"] = [[] for _ in range((MAX_REQUEST_BYTES - 200) // 3)]
    r = post(local, json.dumps(doc, separators=(",", ":")).encode())
    assert r.status_code == 422 and "more than the limit of 1572864" in r.text


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (model("m\n"), "metadata.name"),
        ({**model(), "metadata": {"name": "m", "namespace": "default\n"}}, "metadata.namespace"),
        (model(env={"TOKEN\n": "x"}), "spec.env"),
        (model(resources={"cpu": 1e308}), "spec.resources.cpu"),
        (
            model(image={"upload": {"requestId": "../../../tmp/x", "md5": "0" * 32}}),
            "spec.image.upload.requestId",
        ),
        ({**model(), "metadata": {"name": "m", "labels": {"a": "b" * 64}}}, "metadata.labels"),
    ],
)
def test_invalid_fields_are_422_with_the_field(
    local: Local, doc: dict[str, Any], field: str
) -> None:
    r = post(local, json.dumps(doc).encode())
    assert r.status_code == 422, r.text
    assert field in [p[0] for p in r.json()["problems"]]
    assert local.client.list_objects("Model", None) == []


def test_secret_names_are_checked_and_sub_deletes_secrets(local: Local) -> None:
    bad = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "Bad/../Name"}}
    resp = post(local, json.dumps({**bad, "stringData": {"k": "v"}}).encode())
    assert resp.status_code == 422 and resp.json()["problems"][0][0] == "metadata.name"
    assert local.client.secrets(None) == []

    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: %s}\nstringData: {token: s3cr3t}\n"
    for name in ("hf", "other"):
        assert sub("apply", "-f", "-", input=secret % name).returncode == 0
    r = sub("delete", "secret", "hf")
    assert (r.returncode, r.stdout.strip()) == (0, "secret/hf deleted"), r.stderr
    r = sub("delete", "secret/other")
    assert (r.returncode, r.stdout.strip()) == (0, "secret/other deleted"), r.stderr
    assert local.client.secrets(None) == []
    assert sub("delete", "secret/hf").returncode == 3
    assert sub("delete", "secret/hf", "--ignore-not-found").returncode == 0
    assert sub("delete", "secret").returncode == 2


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_refuses_bad_manifests_with_exit_4(local: Local, tmp_path: Path) -> None:
    cases = {
        "bomb.yaml": (BOMB, "aliases expand to more than"),
        "deep.yaml": (OBJ.format(name="d") + "status: " + "[" * 5000 + "]" * 5000, "deeper"),
        "dup.yaml": (OBJ.format(name="a") + OBJ.format(name="b"), "duplicate key 'apiVersion'"),
        "empty.yaml": ("# nothing here\n", "holds no objects"),
        "inf.yaml": (
            OBJ.format(name="i").replace("}", "}\n  resources: {cpu: .inf}"),
            "spec.resources.cpu: must be a finite number",
        ),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        r = sub("apply", "-f", str(tmp_path / name))
        assert (r.returncode, r.stdout) == (4, ""), (name, r.stderr)
        assert expected in r.stderr and "Traceback" not in r.stderr, (name, r.stderr)
    assert local.client.list_objects(None, None) == []


def test_cli_missing_file_is_not_found(local: Local, tmp_path: Path) -> None:
    r = sub("apply", "-f", str(tmp_path / "nope.yaml"))
    assert r.returncode == 3 and "no such file or directory" in r.stderr


def test_upload_request_id_never_writes_outside_home(local: Local) -> None:
    target = Path("/tmp") / f"substratus-escape-{uuid.uuid4().hex}"
    request_id = "../../../../../../../.." + str(target)
    doc = model(image={"upload": {"requestId": request_id, "md5": "0" * 32}})
    assert post(local, json.dumps(doc).encode()).status_code == 422
    assert not target.exists()
