"""Leader election with a ``coordination.k8s.io`` Lease, so that two replicas never act at once.

Before it reconciles anything, the operator waits to hold the Lease (``substratus-operator`` in
its namespace); then a thread renews it. A replica that cannot renew before the Lease would
expire exits, as controller-runtime's managers do, so that it never acts beside a new leader;
its Deployment starts it again as a candidate. Every write carries the Lease's resourceVersion:
two candidates that see it expire at once cannot both take it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError, Client
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger("substratus.operator")

LEASE_NAME = "substratus-operator"
DURATION_S = 15
RENEW_EVERY_S = 5.0
RETRY_EVERY_S = 2.0


def identity() -> str:
    """``POD_NAME`` (the Deployment sets it from the downward API): a container that restarts
    in its pod takes its own Lease back at once instead of waiting for it to expire; outside a
    pod, the host and the process."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def _now() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    def __init__(self, client: Client, namespace: str, me: str | None = None) -> None:
        self.client = client
        self.namespace = namespace
        self.me = me or identity()
        self._released = threading.Event()
        self._answered = threading.Event()  # an attempt at the Lease got an answer
        self._renewer: threading.Thread | None = None
        self.leading = False

    def ready(self) -> str | None:
        """None once the API server answered about the Lease (readiness); else why not."""
        if self._answered.is_set():
            return None
        return f"no answer yet from the API server about the lease {self.namespace}/{LEASE_NAME}"

    def alive(self) -> str | None:
        """None unless this replica led and its renewal stopped (liveness)."""
        renewer = self._renewer
        if renewer is not None and not renewer.is_alive() and not self._released.is_set():
            return "the lease's renewal stopped"
        return None

    def _expired(self, lease: Any) -> bool:
        spec = lease.spec or LeaseSpec()
        renewed = spec.renewTime or spec.acquireTime
        if not spec.holderIdentity or renewed is None:
            return True
        duration = spec.leaseDurationSeconds or DURATION_S
        return (_now() - renewed).total_seconds() > duration

    def try_acquire(self) -> bool:
        """One attempt: take the Lease if it is free, expired or already ours."""
        self.leading = self._try_acquire()
        self._answered.set()
        return self.leading

    def _try_acquire(self) -> bool:
        now = _now()
        try:
            lease = self.client.get(Lease, LEASE_NAME, namespace=self.namespace)
        except ApiError as e:
            if e.status.code != 404:
                raise
            lease = Lease(
                metadata=ObjectMeta(name=LEASE_NAME, namespace=self.namespace),
                spec=LeaseSpec(
                    holderIdentity=self.me,
                    leaseDurationSeconds=DURATION_S,
                    acquireTime=now,
                    renewTime=now,
                    leaseTransitions=0,
                ),
            )
            try:
                self.client.create(lease)
                return True
            except ApiError as e2:
                if e2.status.code == 409:  # another candidate created it first
                    return False
                raise
        if lease.spec is None:
            lease.spec = LeaseSpec()
        spec = lease.spec
        ours = spec.holderIdentity == self.me
        if not ours and not self._expired(lease):
            return False
        if not ours:
            spec.acquireTime = now
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        spec.holderIdentity = self.me
        spec.leaseDurationSeconds = DURATION_S
        spec.renewTime = now
        try:
            self.client.replace(lease)  # carries the resourceVersion that was read
            return True
        except ApiError as e:
            if e.status.code == 409:  # someone else wrote it meanwhile
                return False
            raise

    def acquire(self) -> None:
        """Block until this replica leads."""
        waited = False
        while not self.try_acquire():
            if not waited:
                log.info(
                    "waiting for the lease %s/%s (another replica leads)",
                    self.namespace,
                    LEASE_NAME,
                )
                waited = True
            time.sleep(RETRY_EVERY_S)
        log.info("leading as %s (lease %s/%s)", self.me, self.namespace, LEASE_NAME)

    def keep(self, lost: Callable[[], None]) -> threading.Thread:
        """Renew in the background; call ``lost`` once the Lease could not be renewed in time."""

        def renew() -> None:
            last = time.monotonic()
            while not self._released.wait(RENEW_EVERY_S):
                try:
                    if self.try_acquire():
                        last = time.monotonic()
                        continue
                    taken = True  # another replica holds it now
                except Exception as e:  # the API server is unreachable: keep trying a while
                    log.warning("renewing the lease failed: %s", e)
                    taken = False
                if taken or time.monotonic() - last > DURATION_S - RENEW_EVERY_S:
                    log.error("lost the lease %s/%s: stopping", self.namespace, LEASE_NAME)
                    lost()
                    return

        thread = threading.Thread(target=renew, name="lease", daemon=True)
        thread.start()
        self._renewer = thread
        return thread

    def release(self) -> None:
        """Give the Lease up on a clean stop (SIGTERM), so a waiting replica (the next pod of
        a rolling update) leads at once instead of after the Lease expires."""
        self._released.set()
        self.leading = False
        try:
            lease = self.client.get(Lease, LEASE_NAME, namespace=self.namespace)
            if lease.spec is None or lease.spec.holderIdentity != self.me:
                return
            lease.spec.holderIdentity = None
            lease.spec.renewTime = _now()
            self.client.replace(lease)
            log.info("released the lease %s/%s", self.namespace, LEASE_NAME)
        except Exception as e:  # taken meanwhile, gone, or unreachable: it will expire
            log.info("did not release the lease: %s", e)
