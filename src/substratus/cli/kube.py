"""`sub` against a cluster: the ``Client`` interface over the Kubernetes API (``kubehttp``).

Chosen the kubectl way: ``--context NAME`` (a context of the kubeconfig that ``--kubeconfig`` or
``KUBECONFIG`` names, else ``~/.kube/config``), or ``SUBSTRATUS_CONTEXT=NAME``. Objects are
applied server-side (field manager ``sub``); the operator does the rest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from substratus.api.kindnames import API_VERSION, GROUP, KIND_NAMES, kind_names
from substratus.cli.kubehttp import ApiServer, StatusError, path_of
from substratus.cli.kubehttp import current_context as current_context  # re-exported
from substratus.core.client import (
    ApplyResult,
    ClientError,
    DeleteResult,
    InvalidError,
    NotFoundError,
    UnavailableError,
)
from substratus.core.naming import RETAIN_ANNOTATION

LABEL_KIND, LABEL_NAME, LABEL_ROLE = f"{GROUP}/kind", f"{GROUP}/name", f"{GROUP}/role"
MAIN, BUILD_CONTEXT, BUILD = "main", "substratus-context", "build"  # the operator's names
RETRIES_429 = 5
START_WAIT_SECONDS = 120.0  # `logs -f` waits this long for a container to start
ANNOTATION_NAME = f"{GROUP}/object-name"
ANNOTATION_NAMESPACE = f"{GROUP}/object-namespace"  # a build pod's owner in another namespace
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML
T = TypeVar("T")


def _retry_after(e: StatusError) -> float:
    """The seconds a 429 asks for (Retry-After, at most 5), else 1."""
    raw = e.headers.get("retry-after", "")
    return min(float(raw), 5.0) if raw.isdigit() else 1.0


def _plain(body: dict[str, Any]) -> dict[str, Any]:
    body.get("metadata", {}).pop("managedFields", None)  # kubectl hides them too
    return body


def _api_error(what: str, e: StatusError) -> ClientError:
    """The API server's refusal as the Client interface's error."""
    status = e.status
    if e.code == 404:
        return NotFoundError(status.get("message") or f"{what}: not found")
    if e.code in (400, 422):  # 400: fields the strict decoding refused
        causes = (status.get("details") or {}).get("causes") or []
        problems = [(c.get("field") or "", c.get("message") or "") for c in causes]
        return InvalidError(status.get("message") or f"{what}: invalid", problems)
    return ClientError(f"{what}: {status.get('message')} ({e.code})")


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


def _when(timestamp: str | None) -> str:
    """An RFC 3339 time to the second (an event's eventTime has microseconds)."""
    return f"{timestamp[:19]}Z" if timestamp else ""


class KubeClient:
    def __init__(self, context: str, kubeconfig: str | None = None) -> None:
        self.context = context
        self.api = ApiServer(context, kubeconfig)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """One API call, with the API server's refusals as the Client interface's errors.
        Told to slow down (429, as for a CRD that was just established), it waits as told, a
        few times, as client-go does."""
        for attempt in range(RETRIES_429 + 1):
            try:
                return fn()
            except StatusError as e:
                if e.code != 429 or attempt == RETRIES_429:
                    raise _api_error(what, e) from None
                time.sleep(_retry_after(e))
            except OSError as e:
                raise UnavailableError(f"cluster {self.context!r}: {e}") from None
        raise AssertionError("unreachable")

    def _request(self, what: str, method: str, path: str, **kwargs: Any) -> Any:
        return self._call(what, lambda: self.api.request(method, path, **kwargs))

    def _items(self, what: str, path: str, kind: str, **query: Any) -> list[dict[str, Any]]:
        """A list's items, each with its kind (the API server leaves it out of core lists)."""
        found = self._request(what, "GET", path, query=query)
        items = found.get("items") or []
        for item in items:
            item.setdefault("kind", kind)
        return [_plain(i) for i in items]

    def _path(self, kind: str, namespace: str | None, name: str | None = None) -> str:
        return path_of(GROUP, kind_names(kind).plural, namespace, name)

    # -- the Client interface -------------------------------------------------------------

    def events(
        self, namespace: str | None, kind: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        fields = {"involvedObject.kind": kind, "involvedObject.name": name}
        selector = ",".join(f"{k}={v}" for k, v in fields.items() if v)
        found = self._items(
            "events", path_of("", "events", namespace), "Event", fieldSelector=selector or None
        )
        rows = []
        for e in found:
            about = e.get("involvedObject") or {}
            meta = e.get("metadata") or {}
            when = (
                e.get("lastTimestamp")
                or e.get("eventTime")
                or e.get("firstTimestamp")
                or meta.get("creationTimestamp")
            )
            rows.append(
                {
                    "type": e.get("type") or "Normal",
                    "reason": e.get("reason") or "",
                    "message": (e.get("message") or "").split("\n", 1)[0],
                    "object": f"{(about.get('kind') or '').lower()}/{about.get('name')}",
                    "namespace": meta.get("namespace"),
                    "time": _when(when),
                    "count": e.get("count") or 1,
                }
            )
        return sorted(rows, key=lambda r: r["time"])

    def server_version(self) -> str:
        info = self._request("version", "GET", "/version")
        return f"Kubernetes {info.get('gitVersion', 'unknown')} (context {self.context})"

    def _apply(self, label: str, path: str, body: dict[str, Any], dry_run: bool) -> Any:
        query = {
            "fieldManager": "sub",
            "force": "true",
            "fieldValidation": "Strict",  # an unknown field is an error, as kubectl has it
            "dryRun": "All" if dry_run else None,
        }
        return _plain(
            self._request(label, "PATCH", path, query=query, body=body, content_type=APPLY_PATCH)
        )

    def apply(
        self, doc: dict[str, Any], source: str = "<request>", dry_run: bool = False
    ) -> ApplyResult:
        if doc.get("kind") == "Secret" and doc.get("apiVersion") == "v1":
            from substratus.api.secrets import parse_secret

            namespace, name, data = parse_secret(doc, source)
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {**doc["metadata"], "namespace": namespace},
                "type": doc.get("type", "Opaque"),
                "stringData": data,
            }
            path = path_of("", "secrets", namespace, name)
            before = self._get_or_none(path, name)
            applied = self._apply(f"secret {name}", path, secret, dry_run)
            return ApplyResult("created" if before is None else "configured", applied)
        meta = doc.get("metadata")
        if not (
            doc.get("kind") in KIND_NAMES
            and doc.get("apiVersion") == API_VERSION
            and isinstance(meta, dict)
            and isinstance(meta.get("name"), str)
        ):
            _check(doc, source)  # not an object of ours: says why
        assert isinstance(meta, dict)
        kind = kind_names(str(doc["kind"])).kind
        namespace = meta.get("namespace") or "default"
        body = {**doc, "metadata": {**meta, "namespace": namespace}}
        body.pop("status", None)
        label = f"{kind.lower()}/{meta.get('name')}"
        path = self._path(kind, namespace, str(meta.get("name")))
        before = self._get_or_none(path, label)
        try:
            applied = self._apply(label, path, body, dry_run)
        except UnavailableError:
            raise
        except ClientError:
            # The API server's schema and admission policy are made from the same models as
            # our validation, which words the problem as the manifest has it: ask it first
            # (a wrong type fails server-side apply's typed patch with a bare 500).
            _check(doc, source)
            raise
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

    def _get_or_none(self, path: str, what: str) -> dict[str, Any] | None:
        try:
            return _plain(self._request(what, "GET", path))
        except NotFoundError:
            return None

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        cls = kind_names(kind)
        try:
            return _plain(self._request(name, "GET", self._path(cls.kind, namespace, name)))
        except NotFoundError:  # worded as locally (the API server names the CRD's group)
            raise NotFoundError(
                f'{cls.plural} "{name}" not found in namespace "{namespace}"'
            ) from None

    def list_objects(self, kind: str | None, namespace: str | None) -> list[dict[str, Any]]:
        kinds = [kind_names(kind).kind] if kind else list(KIND_NAMES)
        return [o for k in kinds for o in self._items(k, self._path(k, namespace), k)]

    def delete(self, kind: str, namespace: str, name: str, retain: bool = False) -> DeleteResult:
        cls = kind_names(kind)
        body = self.get(cls.kind, namespace, name)
        path = self._path(cls.kind, namespace, name)
        if retain and cls.has_artifacts:
            patch = {"metadata": {"annotations": {RETAIN_ANNOTATION: "true"}}}
            self._request(
                name, "PATCH", path, body=patch, content_type="application/merge-patch+json"
            )
        self._request(name, "DELETE", path)
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
        query = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "fieldSelector": f"metadata.name={name}" if name else None,
            "resourceVersion": resource_version,
            "timeoutSeconds": max(1, int(timeout)),
        }
        # Without a resource version the API server starts with the objects as they are.
        lines = self.api.stream(self._path(cls.kind, namespace), query, timeout + 30)
        try:
            for line in lines:
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    message = (event.get("object") or {}).get("message")
                    raise ClientError(f"watch {cls.plural}: {message}")
                yield {"type": event["type"], "object": _plain(event["object"])}
        except StatusError as e:
            raise ClientError(f"watch {cls.plural}: {e}") from None
        except OSError as e:
            raise UnavailableError(f"cluster {self.context!r}: {e}") from None

    def _pods(self, what: str, namespace: str | None, **labels: str) -> list[dict[str, Any]]:
        path = path_of("", "pods", namespace)
        return self._items(what, path, "Pod", labelSelector=_selector(labels))

    def logs(
        self, kind: str, namespace: str, name: str, follow: bool = False, tail: int | None = None
    ) -> Iterator[bytes]:
        """The workload's output: the newest pod the operator made for the object (while
        its image builds, the build's: fetching the context, then BuildKit)."""
        cls = kind_names(kind)
        pods = [
            p
            for p in self._pods(name, namespace, **{LABEL_KIND: cls.kind})
            if _annotations(p).get(ANNOTATION_NAME) == name
        ]
        pods += self._build_pods_elsewhere(cls.kind, namespace, name)
        if not pods:
            raise NotFoundError(f"{cls.plural}/{name}: no pod yet")
        pod = max(pods, key=lambda p: p["metadata"]["creationTimestamp"])
        building = (pod["metadata"].get("labels") or {}).get(LABEL_ROLE) == "build"
        containers = [BUILD_CONTEXT, BUILD] if building else [MAIN]
        # Following, each container's log is followed in turn until it ends (an init
        # container's ends before the next one starts).
        for container in containers:
            yield from self._container_log(pod["metadata"], name, container, follow, tail)

    def serving_pod(self, kind: str, namespace: str, name: str, role: str = "service") -> str:
        """The name of the object's newest Ready workload pod (a Server's or Notebook's; with
        ``role="proxy"``, an autoscaled Server's proxy's)."""
        cls = kind_names(kind)
        pods = [
            p
            for p in self._pods(name, namespace, **{LABEL_KIND: cls.kind, LABEL_ROLE: role})
            if _annotations(p).get(ANNOTATION_NAME) == name
            and not p["metadata"].get("deletionTimestamp")
            and any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
        ]
        if not pods:
            raise NotFoundError(f"{cls.plural}/{name}: no Ready pod")
        return str(max(pods, key=lambda p: p["metadata"]["creationTimestamp"])["metadata"]["name"])

    def _build_pods_elsewhere(self, kind: str, namespace: str, name: str) -> list[dict[str, Any]]:
        """The object's build pods in the operator's builds namespace (build_namespace), where
        the user may read them; none where listing pods across namespaces is not allowed."""
        try:
            found = self._pods("build pods", None, **{LABEL_KIND: kind, LABEL_ROLE: "build"})
        except ClientError:
            return []
        owner = {ANNOTATION_NAME: name, ANNOTATION_NAMESPACE: namespace}
        return [p for p in found if owner.items() <= _annotations(p).items()]

    def _container_log(
        self, pod: dict[str, Any], name: str, container: str, follow: bool, tail: int | None
    ) -> Iterator[bytes]:
        deadline = time.monotonic() + (START_WAIT_SECONDS if follow else 0)
        path = path_of("", "pods", pod["namespace"], pod["name"]) + "/log"
        query = {"container": container, "follow": "true" if follow else None, "tailLines": tail}
        while True:
            try:
                yield from self.api.stream(path, query, None if follow else 60)
                return
            except StatusError as e:
                if e.code != 400:
                    raise _api_error(name, e) from None
                # The container has not started (an init container still runs): wait for it
                # when following, else there is nothing to show yet.
                if time.monotonic() > deadline:
                    return
                time.sleep(1.0)
            except OSError as e:
                raise UnavailableError(f"cluster {self.context!r}: {e}") from None

    def secrets(self, namespace: str | None) -> list[dict[str, Any]]:
        items = self._items("secrets", path_of("", "secrets", namespace), "Secret")
        # Names and keys only, as locally: values stay in the cluster.
        return [
            {
                "metadata": {
                    "namespace": s["metadata"]["namespace"],
                    "name": s["metadata"]["name"],
                },
                "keys": sorted(s.get("data") or {}),
            }
            for s in items
        ]

    def delete_secret(self, namespace: str, name: str) -> None:
        self._request(f"secret {name}", "DELETE", path_of("", "secrets", namespace, name))


def _check(doc: dict[str, Any], source: str) -> None:
    """Our own validation of a document (pydantic: imported only when it has something to say)."""
    from substratus.api.loading import parse_object

    parse_object(doc, source)


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def _user_fields(obj: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {f: obj.get(f) if f == "spec" else meta.get(f) or {} for f in fields}
