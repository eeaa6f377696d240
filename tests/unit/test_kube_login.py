"""kopf's login in a pod: the ServiceAccount's files, at the address the environment names (as
client-go finds it), never a DNS name a host-network pod cannot resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

kopf = pytest.importorskip("kopf")

from substratus.runtimes.kubernetes import kopf_handlers  # noqa: E402


def test_in_cluster_login_uses_the_service_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kopf_handlers, "SERVICE_ACCOUNT", tmp_path)
    settings = kopf.OperatorSettings()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    assert kopf_handlers.in_cluster(settings) is None  # no token: not in a pod

    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "ca.crt").write_text("ca")
    (tmp_path / "namespace").write_text("substratus-system")
    info = kopf_handlers.in_cluster(settings)
    assert info is not None
    assert (info.server, info.token, info.default_namespace) == (
        "https://10.96.0.1:6443",
        "tok",
        "substratus-system",
    )
    assert info.ca_path == str(tmp_path / "ca.crt")

    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    info = kopf_handlers.in_cluster(settings)
    assert info is not None and info.server == "https://[fd00::1]:6443"

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert kopf_handlers.in_cluster(settings) is None  # not in a pod: the kubeconfig
