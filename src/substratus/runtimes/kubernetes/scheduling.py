"""``spec.resources`` as a pod asks for them: requests and limits, and where GPUs of a type are,
by cloud profile."""

from __future__ import annotations

from typing import Any

from substratus.api.common import Resources

GPU_RESOURCE = "nvidia.com/gpu"
# Every profile tolerates the taint GPU node pools carry.
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def _quantity(value: float, unit: str) -> str:
    return f"{value:g}{unit}"


def resource_requirements(res: Resources) -> dict[str, Any]:
    """Requests equal limits (the Guaranteed class for CPU and memory, as a local run's cgroup
    is a hard limit); memory and disk are GiB."""
    amounts: dict[str, str] = {}
    if res.cpu is not None:
        amounts["cpu"] = _quantity(res.cpu, "")
    if res.memory is not None:
        amounts["memory"] = _quantity(res.memory, "Gi")
    if res.disk is not None:
        amounts["ephemeral-storage"] = _quantity(res.disk, "Gi")
    limits = dict(amounts)
    if res.gpu_count:
        limits[GPU_RESOURCE] = str(res.gpu_count)
    return {"requests": amounts, "limits": limits} if limits else {}


def _family(gpu_type: str) -> str:
    """nvidia-tesla-t4 -> t4, nvidia-a100-80gb -> a100."""
    return gpu_type.lower().removeprefix("nvidia-").removeprefix("tesla-").split("-")[0]


def placement(res: Resources, cloud: str, type_label: str = "") -> dict[str, Any]:
    """``nodeSelector`` and ``tolerations`` for a workload that asks for GPUs. ``type_label``:
    the node label whose value is the GPU type (``SUBSTRATUS_GPU_TYPE_LABEL``), for clusters
    whose own labels do not name it (the generic and AKS profiles)."""
    if not res.gpu_count or res.gpu is None:
        return {}
    gpu_type = res.gpu.type
    if cloud == "gke":
        # GKE labels GPU nodes with the accelerator type as the API names it.
        selector = {"cloud.google.com/gke-accelerator": gpu_type}
    elif cloud == "eks":
        # Karpenter's well-known label: the GPU's name, such as l4, a10g, a100, h100.
        selector = {"karpenter.k8s.aws/instance-gpu-name": _family(gpu_type)}
    elif cloud == "aks":
        # AKS marks GPU pools but not their GPU's model: a type needs a pool of its own (and
        # the sku=gpu taint AKS recommends).
        selector = {"kubernetes.azure.com/accelerator": "nvidia"}
        toleration = {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
        if type_label:
            selector[type_label] = gpu_type
        return {"nodeSelector": selector, "tolerations": [GPU_TOLERATION, toleration]}
    else:
        # NVIDIA's GPU feature discovery: present everywhere its device plugin runs. Its
        # product label spells models its own way, so the type needs a label of the cluster's.
        selector = {"nvidia.com/gpu.present": "true"}
        if type_label:
            selector[type_label] = gpu_type
    return {"nodeSelector": selector, "tolerations": [GPU_TOLERATION]}
