"""The real node's configuration files (containerd, CNI, kubelet, kube-proxy), as text.

Each keeps every directory and socket under the node's state directory and turns off what
would change the host beyond what teardown undoes (see :mod:`tests.kube.hoststate`).
"""

from __future__ import annotations

import json
from pathlib import Path

NETWORK = "substratus-node"  # the CNI network's name: its iptables rules carry it
BRIDGE = "substratus0"
POD_CIDR = "10.245.0.0/24"  # apart from kwok's 10.244.0.0/16 and podman's 10.88.0.0/16


def cni_conflist(ipam_dir: Path) -> str:
    """A bridge with host-local addresses, and portmap for hostPorts."""
    bridge = {
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": True,
        "ipMasq": True,
        "hairpinMode": True,
        "ipam": {
            "type": "host-local",
            "dataDir": str(ipam_dir),
            "ranges": [[{"subnet": POD_CIDR}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    }
    portmap = {"type": "portmap", "capabilities": {"portMappings": True}}
    return json.dumps({"cniVersion": "1.0.0", "name": NETWORK, "plugins": [bridge, portmap]})


def registry_hosts(registry: str) -> str:
    """containerd's hosts.toml for a plain-HTTP registry."""
    return (
        f'server = "http://{registry}"\n\n'
        f'[host."http://{registry}"]\n'
        '  capabilities = ["pull", "resolve", "push"]\n'
    )


def containerd_config(
    state: Path, root: Path, pause: str, runc: Path, cni_bin: Path, hosts: Path
) -> str:
    """containerd 1.6's configuration (version 2): every directory and socket private; its
    ``root`` (images) outlives the session (tests/kube/imagestore.py)."""
    d = state / "containerd"
    return f"""version = 2
root = "{root}"
state = "{d / "state"}"
oom_score = 0
[grpc]
  address = "{d / "containerd.sock"}"
[ttrpc]
  address = "{d / "containerd.sock.ttrpc"}"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # No CAP_SYS_RESOURCE in these VMs: runc cannot lower oom_score_adj (the sandbox asks for -998).
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{state / "cni" / "net.d"}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{runc}"
"""


def kubelet_config(
    state: Path, socket_path: Path, ip: str, port: int, healthz: int, ca: Path
) -> str:
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 here: 1.35+ refuses it unless told (it then only warns).
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://{socket_path}
address: {ip}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: "{ca}"}}
authorization: {{mode: Webhook}}
podLogsDir: {state / "pod-logs"}
volumePluginDir: {state / "kubelet" / "volume-plugins"}
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
registerNode: true
makeIPTablesUtilChains: false
# Never garbage-collect images: they are imported, not pulled, and cannot come back.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}}
shutdownGracePeriod: 0s
"""


def kube_proxy_config(kubeconfig: Path, node: str, healthz: int, metrics: int) -> str:
    return (
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n"
        "kind: KubeProxyConfiguration\n"
        f'clientConnection: {{kubeconfig: "{kubeconfig}"}}\n'
        f"hostnameOverride: {node}\n"
        "mode: iptables\n"
        f"clusterCIDR: {POD_CIDR}\n"
        "bindAddress: 127.0.0.1\n"
        f"healthzBindAddress: 127.0.0.1:{healthz}\n"
        f"metricsBindAddress: 127.0.0.1:{metrics}\n"
        # Zeros leave the host's conntrack settings alone; no route_localnet either.
        "conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}\n"
        "iptables: {localhostNodePorts: false}\n"
    )
