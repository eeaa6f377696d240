"""`sub` against a cluster: the ``Client`` interface over the Kubernetes API (lightkube).

Chosen the kubectl way: ``--context NAME`` (a context of the kubeconfig that ``--kubeconfig`` or
``KUBECONFIG`` names, else ``~/.kube/config``), or ``SUBSTRATUS_CONTEXT=NAME``. Objects are
applied server-side (field manager ``sub``); the operator does the rest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx2
from lightkube import ALL_NS, ApiError, Client, KubeConfig
from lightkube.codecs import from_dict
from lightkube.core.exceptions import ConfigError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

from substratus.api.kindnames import GROUP, KIND_NAMES, kind_names
from substratus.core.client import (
    ApplyResult,
    ClientError,
    DeleteResult,
    InvalidError,
    NotFoundError,
    UnavailableError,
)
from substratus.core.naming import RETAIN_ANNOTATION

RESOURCES = {
    kind: create_namespaced_resource(GROUP, "v1", kind, names.plural)
    for kind, names in KIND_NAMES.items()
}
LABEL_KIND, LABEL_NAME, LABEL_ROLE = f"{GROUP}/kind", f"{GROUP}/name", f"{GROUP}/role"
MAIN, BUILD_CONTEXT, BUILD = "main", "substratus-context", "build"  # the operator's names
RETRIES_429 = 5
START_WAIT_SECONDS = 120.0  # `logs -f` waits this long for a container to start
ANNOTATION_NAME = f"{GROUP}/object-name"
ANNOTATION_NAMESPACE = f"{GROUP}/object-namespace"  # a build pod's owner in another namespace


def current_context(kubeconfig: str | None) -> str | None:
    """The kubeconfig's current context, as kubectl would use it; None without one."""
    try:
        return KubeConfig.from_file(_kubeconfig_path(kubeconfig)).current_context or None
    except (ConfigError, OSError, ValueError):
        return None


def _kubeconfig_path(kubeconfig: str | None) -> str:
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return path or str(Path("~/.kube/config").expanduser())


def _core_v1() -> Any:
    """lightkube's core/v1 resources (Pod, Secret, Event), on first use: their models are
    dataclasses made at import, a start-up cost `get` and `apply` of our kinds do without."""
    from lightkube.resources import core_v1

    return core_v1


def _retry_after(e: ApiError) -> float:
    """The seconds a 429 asks for (Retry-After, at most 5), else 1."""
    response = getattr(e, "response", None)
    raw = response.headers.get("Retry-After", "") if response is not None else ""
    return min(float(raw), 5.0) if raw.isdigit() else 1.0


def _plain(resource: Any) -> dict[str, Any]:
    body = cast(dict[str, Any], resource.to_dict())
    body.get("metadata", {}).pop("managedFields", None)  # kubectl hides them too
    return body


def _api_error(what: str, e: ApiError) -> ClientError:
    """The API server's refusal as the Client interface's error."""
    status = e.status
    if status.code == 404:
        return NotFoundError(status.message or f"{what}: not found")
    if status.code == 422:
        causes = (status.details.causes if status.details else None) or []
        problems = [(c.field or "", c.message or "") for c in causes]
        return InvalidError(status.message or f"{what}: invalid", problems)
    return ClientError(f"{what}: {status.message} ({status.code})")


class KubeClient:
    def __init__(self, context: str, kubeconfig: str | None = None) -> None:
        path = _kubeconfig_path(kubeconfig)
        try:
            kubeconfig_file = KubeConfig.from_file(path)
            if context not in kubeconfig_file.contexts:
                known = ", ".join(sorted(kubeconfig_file.contexts)) or "none"
                raise UnavailableError(
                    f"kubeconfig {path}: no context {context!r} (it has: {known})"
                )
            config = kubeconfig_file.get(context_name=context)
        except (ConfigError, OSError) as e:
            raise UnavailableError(f"kubeconfig {path}: {e}") from None
        assert config is not None
        self.context = context
        self.config = config
        self.k = Client(config=config, field_manager="sub")

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One API call, with the API server's refusals as the Client interface's errors.
        Told to slow down (429, as for a CRD that was just established), it waits as told, a
        few times, as client-go does."""
        for attempt in range(RETRIES_429 + 1):
            try:
                return fn(*args, **kwargs)
            except ApiError as e:
                if e.status.code != 429 or attempt == RETRIES_429:
                    raise _api_error(what, e) from None
                time.sleep(_retry_after(e))
            except (httpx2.HTTPError, OSError) as e:
                raise UnavailableError(f"cluster {self.context!r}: {e}") from None
        raise AssertionError("unreachable")

    def _list(self, what: str, resource: Any, **kwargs: Any) -> list[Any]:
        """A list, read whole inside ``_call``: lightkube's is lazy, and its errors would
        otherwise come while iterating, outside the error mapping."""
        return cast(list[Any], self._call(what, lambda: list(self.k.list(resource, **kwargs))))

    # -- the Client interface -------------------------------------------------------------

    def events(
        self, namespace: str | None, kind: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        fields = {"involvedObject.kind": kind, "involvedObject.name": name}
        selector = {k: v for k, v in fields.items() if v}
        found = self._list(
            "events",
            _core_v1().Event,
            namespace=namespace or ALL_NS,
            fields=selector or None,
        )
        rows = []
        for e in found:
            about = e.involvedObject
            when = (
                e.lastTimestamp or e.eventTime or e.firstTimestamp or e.metadata.creationTimestamp
            )
            rows.append(
                {
                    "type": e.type or "Normal",
                    "reason": e.reason or "",
                    "message": (e.message or "").split("\n", 1)[0],
                    "object": f"{(about.kind or '').lower()}/{about.name}",
                    "namespace": e.metadata.namespace,
                    "time": when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else "",
                    "count": e.count or 1,
                }
            )
        return sorted(rows, key=lambda r: r["time"])

    def server_version(self) -> str:
        def get() -> Any:
            response = self.k._client._client.get("/version")  # no lightkube resource for it
            response.raise_for_status()
            return response.json()

        info = self._call("version", get)
        return f"Kubernetes {info.get('gitVersion', 'unknown')} (context {self.context})"

    def apply(
        self, doc: dict[str, Any], source: str = "<request>", dry_run: bool = False
    ) -> ApplyResult:
        from substratus.api.loading import parse_object
        from substratus.api.secrets import parse_secret

        if doc.get("kind") == "Secret" and doc.get("apiVersion") == "v1":
            namespace, name, data = parse_secret(doc, source)
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {**doc["metadata"], "namespace": namespace},
                "type": doc.get("type", "Opaque"),
                "stringData": data,
            }
            before = self._get_or_none(_core_v1().Secret, name, namespace)
            applied = self._call(
                f"secret {name}", self.k.apply, from_dict(secret), force=True, dry_run=dry_run
            )
            action = "created" if before is None else "configured"
            return ApplyResult(action, _plain(applied))
        obj = parse_object(doc, source)  # the API server checks again, with the CRD's schema
        kind, meta = obj.KIND, doc["metadata"]
        namespace = meta.get("namespace") or obj.metadata.namespace
        body = {**doc, "metadata": {**meta, "namespace": namespace}}
        body.pop("status", None)
        before = self._get_or_none(RESOURCES[kind], meta["name"], namespace)
        label = f"{kind.lower()}/{meta['name']}"
        applied = _plain(
            self._call(label, self.k.apply, from_dict(body), force=True, dry_run=dry_run)
        )
        if before is None:
            return ApplyResult("created", applied)
        if dry_run:  # nothing was written: compare what would be with what is
            keep = ("spec", "labels", "annotations")
            same = _user_fields(applied, keep) == _user_fields(before, keep)
            return ApplyResult("unchanged" if same else "configured", applied)
        # A server-side apply that changes nothing does not bump the resourceVersion.
        same = applied["metadata"].get("resourceVersion") == before["metadata"].get(
            "resourceVersion"
        )
        return ApplyResult("unchanged" if same else "configured", applied)

    def _get_or_none(self, resource: Any, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return _plain(self._call(name, self.k.get, resource, name, namespace=namespace))
        except NotFoundError:
            return None

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        cls = kind_names(kind)
        try:
            return _plain(
                self._call(name, self.k.get, RESOURCES[cls.kind], name, namespace=namespace)
            )
        except NotFoundError:  # worded as locally (the API server names the CRD's group)
            raise NotFoundError(
                f'{cls.plural} "{name}" not found in namespace "{namespace}"'
            ) from None

    def list_objects(self, kind: str | None, namespace: str | None) -> list[dict[str, Any]]:
        kinds = [kind_names(kind).kind] if kind else list(KIND_NAMES)
        out = []
        for k in kinds:
            items = self._list(k, RESOURCES[k], namespace=namespace or ALL_NS)
            out += [_plain(i) for i in items]
        return out

    def delete(self, kind: str, namespace: str, name: str, retain: bool = False) -> DeleteResult:
        cls = kind_names(kind)
        body = self.get(cls.kind, namespace, name)
        if retain and cls.has_artifacts:
            patch = {"metadata": {"annotations": {RETAIN_ANNOTATION: "true"}}}
            self._call(
                name,
                self.k.patch,
                RESOURCES[cls.kind],
                name,
                patch,
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        self._call(name, self.k.delete, RESOURCES[cls.kind], name, namespace=namespace)
        # Pods on a cluster have their own copy of what they mount: nobody is left without it.
        return DeleteResult(body, [])

    def watch(
        self,
        kind: str | None,
        namespace: str | None,
        name: str | None = None,
        resource_version: str | None = None,
        timeout: float = 3600,
    ) -> Iterator[dict[str, Any]]:
        if kind is None:
            raise ClientError("watching every kind of a cluster at once is not supported")
        cls = kind_names(kind)
        fields = cast(dict[str, Any], {"metadata.name": name}) if name else None
        try:
            # Without a resource version the API server starts with the objects as they are.
            for event_type, obj in self.k.watch(
                RESOURCES[cls.kind],
                namespace=namespace or ALL_NS,
                fields=fields,
                resource_version=resource_version,
                server_timeout=max(1, int(timeout)),
            ):
                yield {"type": event_type, "object": _plain(obj)}
        except ApiError as e:
            raise ClientError(f"watch {cls.plural}: {e.status.message}") from None
        except (httpx2.HTTPError, OSError) as e:
            raise UnavailableError(f"cluster {self.context!r}: {e}") from None

    def logs(
        self, kind: str, namespace: str, name: str, follow: bool = False, tail: int | None = None
    ) -> Iterator[bytes]:
        """The workload's output: the newest pod the operator made for the object (while
        its image builds, the build's: fetching the context, then BuildKit)."""
        cls = kind_names(kind)
        pods = [
            p
            for p in self._list(
                name,
                _core_v1().Pod,
                namespace=namespace,
                labels={LABEL_KIND: cls.kind},
            )
            if (p.metadata.annotations or {}).get(ANNOTATION_NAME) == name
        ]
        pods += self._build_pods_elsewhere(cls.kind, namespace, name)
        if not pods:
            raise NotFoundError(f"{cls.plural}/{name}: no pod yet")
        pod = max(pods, key=lambda p: p.metadata.creationTimestamp)
        building = (pod.metadata.labels or {}).get(LABEL_ROLE) == "build"
        containers = [BUILD_CONTEXT, BUILD] if building else [MAIN]
        # Following, each container's log is followed in turn until it ends (an init
        # container's ends before the next one starts).
        for container in containers:
            yield from self._container_log(
                pod.metadata.name, pod.metadata.namespace, name, container, follow, tail
            )

    def serving_pod(self, kind: str, namespace: str, name: str, role: str = "service") -> str:
        """The name of the object's newest Ready workload pod (a Server's or Notebook's; with
        ``role="proxy"``, an autoscaled Server's proxy's)."""
        cls = kind_names(kind)
        pods = [
            p
            for p in self._list(
                name,
                _core_v1().Pod,
                namespace=namespace,
                labels={LABEL_KIND: cls.kind, LABEL_ROLE: role},
            )
            if (p.metadata.annotations or {}).get(ANNOTATION_NAME) == name
            and p.metadata.deletionTimestamp is None
            and any(
                c.type == "Ready" and c.status == "True"
                for c in (p.status.conditions if p.status else None) or []
            )
        ]
        if not pods:
            raise NotFoundError(f"{cls.plural}/{name}: no Ready pod")
        return str(max(pods, key=lambda p: p.metadata.creationTimestamp).metadata.name)

    def _build_pods_elsewhere(self, kind: str, namespace: str, name: str) -> list[Any]:
        """The object's build pods in the operator's builds namespace (build_namespace), where
        the user may read them; none where listing pods across namespaces is not allowed."""
        try:
            found = self.k.list(
                _core_v1().Pod, namespace=ALL_NS, labels={LABEL_KIND: kind, LABEL_ROLE: "build"}
            )
            owner = {ANNOTATION_NAME: name, ANNOTATION_NAMESPACE: namespace}
            return [
                p
                for p in found
                if p.metadata is not None
                and owner.items() <= (p.metadata.annotations or {}).items()
            ]
        except (ApiError, httpx2.HTTPError, OSError):
            return []

    def _container_log(
        self,
        pod: str,
        namespace: str,
        name: str,
        container: str,
        follow: bool,
        tail: int | None,
    ) -> Iterator[bytes]:
        deadline = time.monotonic() + (START_WAIT_SECONDS if follow else 0)
        while True:
            try:
                lines = self.k.log(
                    pod, namespace=namespace, container=container, follow=follow, tail_lines=tail
                )
                for line in lines:
                    yield line.encode()
                return
            except ApiError as e:
                if e.status.code != 400:
                    raise _api_error(name, e) from None
                # The container has not started (an init container still runs): wait for it
                # when following, else there is nothing to show yet.
                if time.monotonic() > deadline:
                    return
                time.sleep(1.0)
            except (httpx2.HTTPError, OSError) as e:
                raise UnavailableError(f"cluster {self.context!r}: {e}") from None

    def secrets(self, namespace: str | None) -> list[dict[str, Any]]:
        items = self._list("secrets", _core_v1().Secret, namespace=namespace or ALL_NS)
        # Names and keys only, as locally: values stay in the cluster.
        return [
            {
                "metadata": {"namespace": s.metadata.namespace, "name": s.metadata.name},
                "keys": sorted(s.data or {}),
            }
            for s in items
        ]

    def delete_secret(self, namespace: str, name: str) -> None:
        self._call(f"secret {name}", self.k.delete, _core_v1().Secret, name, namespace=namespace)


def _user_fields(obj: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {f: obj.get(f) if f == "spec" else meta.get(f) or {} for f in fields}
