"""``python -m substratus.runtimes.kubernetes``: run the operator (see config.py for settings).

Needs a kubeconfig (``KUBECONFIG``) or an in-cluster ServiceAccount. Exits 2 with the setting's
name when the configuration is incomplete.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from substratus.core.retry import RetryPolicy
from substratus.runtimes.kubernetes import logs
from substratus.runtimes.kubernetes.config import ConfigError, load_config
from substratus.runtimes.kubernetes.metrics import ProbeServer


def main() -> int:
    logs.configure()
    try:
        cfg = load_config()
    except ConfigError as e:
        print(f"substratus-operator: {e}", file=sys.stderr)
        return 2
    logs.configure(cfg.log_format)
    log = logging.getLogger("substratus.operator")
    import kopf
    from lightkube import Client

    from substratus.runtimes.kubernetes.kopf_handlers import registry, settings
    from substratus.runtimes.kubernetes.leader import LeaderElector
    from substratus.runtimes.kubernetes.operator import Operator

    client = Client(field_manager="substratus-operator")
    op = Operator(client, cfg, RetryPolicy.from_env(os.environ))
    endpoint = op.observer.upload_endpoint
    if endpoint is not None:  # every replica receives uploads; only the leader reconciles
        host, _, port = cfg.upload_listen.rpartition(":")
        endpoint.serve(host, int(port))
        log.info("upload endpoint on %s, for clients at %s", cfg.upload_listen, cfg.upload_endpoint)
    elector = LeaderElector(client, cfg.lease_namespace)
    if cfg.metrics_listen:
        probes = ProbeServer(
            op.metrics,
            live=lambda: elector.alive() or op.alive(),
            ready=lambda: elector.ready() or op.alive(),
        )
        host, _, port = cfg.metrics_listen.rpartition(":")
        try:
            log.info("metrics and probes on %s:%d", host, probes.serve(host, int(port)))
        except OSError as e:
            print(f"substratus-operator: SUBSTRATUS_METRICS_LISTEN: {e}", file=sys.stderr)
            return 2
    op.metrics.leader.set_function(lambda: 1 if elector.leading else 0)
    elector.acquire()
    # A replica that cannot renew stops at once, so it never acts beside a new leader.
    elector.keep(lambda: os._exit(3))
    namespaces = list(cfg.namespaces)
    if namespaces and cfg.build_namespace and cfg.build_namespace not in namespaces:
        namespaces.append(cfg.build_namespace)  # its build Jobs and pods are watched too
    asyncio.run(
        kopf.operator(
            registry=registry(op),
            settings=settings(),
            standalone=True,  # the Lease keeps one replica acting; no kopf peering objects
            clusterwide=not namespaces,
            namespaces=namespaces,
        )
    )
    elector.release()  # kopf returns on SIGTERM, after its cleanup stopped the workers
    return 0


if __name__ == "__main__":
    sys.exit(main())
