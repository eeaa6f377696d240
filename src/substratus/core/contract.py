"""The container contract's environment, the same in a local process and in a pod: params as
``PARAM_*``, who the workload is, and thread counts that follow ``resources.cpu``."""

from __future__ import annotations

import math

from substratus.api.kinds import Resource
from substratus.core.params import params_env

WORKDIR = "/content"  # model/, data/ (read-only), artifacts/, params.json
# What the runtime puts in the working directory: never the user's own files.
CONTRACT_ENTRIES = frozenset({"model", "data", "artifacts", "params.json"})
SEED_MODEL_PATH = "/model/saved"  # a Server's model, where the design puts it
# A Server's API keys (from a Secret, through spec.env): its autoscaling proxy checks them too.
API_KEYS_ENV = "API_KEYS"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


def contract_env(obj: Resource) -> dict[str, str]:
    env = params_env(obj.spec.params)
    env["SUBSTRATUS_KIND"] = obj.KIND
    env["SUBSTRATUS_NAME"] = obj.metadata.name
    env["SUBSTRATUS_NAMESPACE"] = obj.metadata.namespace
    env["PYTHONUNBUFFERED"] = "1"
    cpu = obj.spec.resources.cpu
    if cpu is not None:
        for var in THREAD_VARS:
            env[var] = str(max(1, math.ceil(cpu)))
    return env
