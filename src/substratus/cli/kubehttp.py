"""The Kubernetes API for `sub` over the standard library: a kubeconfig context read as kubectl
reads it, and JSON requests over one kept-alive HTTPS connection (``runtimes/http1.py``).

Why not lightkube, as the operator uses: importing it and httpx takes ~110 ms, more than twice
what kubectl needs for a whole `kubectl get`; the CLI's dozen REST calls over a socket
start in a few. Credentials, as kubectl takes them: client certificates (files or data), a
token or token file, basic auth, and exec credential plugins (``client.authentication.k8s.io``
v1, v1beta1 and v1alpha1; a token or a client certificate). TLS: the cluster's CA (file or
data, else the system's), ``insecure-skip-tls-verify`` and ``tls-server-name``. Proxies:
``proxy-url``, else ``HTTPS_PROXY``/``HTTP_PROXY`` unless ``NO_PROXY`` names the host (an
HTTP CONNECT proxy).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from substratus.core.client import UnavailableError
from substratus.runtimes import http1

TIMEOUT = 30.0  # seconds a request may wait for the API server (a watch or log waits longer)


class StatusError(Exception):
    """The API server's refusal: its ``Status`` object (``code``, ``message``, ``details``)
    and the response's headers."""

    def __init__(self, status: dict[str, Any], headers: dict[str, str]) -> None:
        super().__init__(status.get("message") or f"HTTP {status.get('code')}")
        self.status, self.headers = status, headers

    @property
    def code(self) -> int:
        return int(self.status.get("code") or 0)


def kubeconfig_path(kubeconfig: str | None) -> str:
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return os.path.expanduser(path or "~/.kube/config")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_kubeconfig(path: str) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.load(_read(path), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as e:
        raise UnavailableError(f"kubeconfig {path}: {e}") from None
    if not isinstance(doc, dict):
        raise UnavailableError(f"kubeconfig {path}: not a kubeconfig (expected a mapping)")
    return doc


def current_context(kubeconfig: str | None) -> str | None:
    """The kubeconfig's current context, as kubectl would use it; None without one."""
    try:
        return read_kubeconfig(kubeconfig_path(kubeconfig)).get("current-context") or None
    except UnavailableError:
        return None


def _named(doc: dict[str, Any], section: str, name: str) -> dict[str, Any] | None:
    for entry in doc.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry.get(section[:-1]) or {}
    return None


class ApiServer:
    """One context of a kubeconfig: where the API server is, how to trust it and who we are."""

    def __init__(self, context: str, kubeconfig: str | None = None) -> None:
        path = kubeconfig_path(kubeconfig)
        doc = read_kubeconfig(path)
        ctx = _named(doc, "contexts", context)
        if ctx is None:
            known = sorted(str(c.get("name")) for c in doc.get("contexts") or [])
            raise UnavailableError(
                f"kubeconfig {path}: no context {context!r} (it has: {', '.join(known) or 'none'})"
            )
        cluster = _named(doc, "clusters", str(ctx.get("cluster")))
        if not cluster or not cluster.get("server"):
            raise UnavailableError(f"kubeconfig {path}: context {context!r} has no cluster server")
        self.where = f"kubeconfig {path}, context {context!r}"
        self.base = os.path.dirname(path)
        self.user: dict[str, Any] = _named(doc, "users", str(ctx.get("user"))) or {}
        self.cluster: dict[str, Any] = cluster
        self.server = str(cluster["server"]).rstrip("/")
        url = urlsplit(self.server)
        self.https = url.scheme == "https"
        self.host, self.port = url.hostname or "", url.port or (443 if self.https else 80)
        self.prefix = url.path
        self.server_name = cluster.get("tls-server-name")
        self.proxy = cluster.get("proxy-url") or _env_proxy(self.host, self.https)
        self._token: str | None = None
        self._exec_cert: tuple[str, str] | None = None
        if "auth-provider" in self.user:
            raise UnavailableError(
                f"{self.where}: auth-provider credentials are not supported (kubectl dropped "
                "them too): use an exec credential plugin"
            )
        self.ssl_context = self._tls(cluster) if self.https else None
        self._conn: http1.Connection | None = None
        # One kept-alive connection carries one request at a time: `sub apply` of a build
        # reads the object in one thread while another finds the build's pod for its log.
        self._lock = threading.Lock()

    # -- credentials ----------------------------------------------------------------------

    def _file(self, name: str) -> str:
        # Relative to the kubeconfig, as kubectl has it.
        return os.path.join(self.base, os.path.expanduser(name))

    def _tls(self, cluster: dict[str, Any]) -> ssl.SSLContext:
        ca_file, ca_data = (
            cluster.get("certificate-authority"),
            cluster.get("certificate-authority-data"),
        )
        try:
            ctx = ssl.create_default_context(
                cafile=self._file(ca_file) if ca_file else None,
                cadata=base64.b64decode(ca_data).decode() if ca_data else None,
            )
            if cluster.get("insecure-skip-tls-verify"):
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            user = self.user
            if user.get("client-certificate-data") or user.get("client-certificate"):
                cert = self._pem(user, "client-certificate")
                key = self._pem(user, "client-key")
                _load_chain(ctx, cert, key)
            elif "exec" in user:
                self._run_exec()
                if self._exec_cert:
                    _load_chain(ctx, *self._exec_cert)
        except (OSError, ValueError, ssl.SSLError) as e:
            raise UnavailableError(f"{self.where}: {e}") from None
        return ctx

    def _pem(self, user: dict[str, Any], field: str) -> str:
        """``field``-data (base64) or the file ``field`` names."""
        if user.get(f"{field}-data"):
            return base64.b64decode(user[f"{field}-data"]).decode()
        if not user.get(field):
            raise ValueError(f"user: {field} or {field}-data is missing")
        return _read(self._file(user[field]))

    def _run_exec(self) -> None:
        """Run the user's exec credential plugin, as kubectl does, for a token or a cert: its
        stderr (a login prompt, a URL to open) goes to the terminal, and so does stdin when
        the plugin may ask and there is a terminal to ask on."""
        import subprocess

        spec = self.user["exec"]
        api = spec.get("apiVersion") or "client.authentication.k8s.io/v1"
        mode = spec.get("interactiveMode") or "IfAvailable"
        interactive = mode != "Never" and sys.stdin.isatty()
        command = [str(spec.get("command")), *(spec.get("args") or [])]
        if mode == "Always" and not interactive:
            raise UnavailableError(f"{self.where}: exec plugin {command[0]!r} needs a terminal")
        info: dict[str, Any] = {"interactive": interactive}
        if spec.get("provideClusterInfo"):
            keys = ("server", "certificate-authority-data", "insecure-skip-tls-verify",
                    "tls-server-name", "proxy-url")  # fmt: skip
            info["cluster"] = {k: self.cluster[k] for k in keys if k in self.cluster}
            extension = (self.cluster.get("extensions") or [{}])[0]
            if extension.get("name") == "client.authentication.k8s.io/exec":
                info["cluster"]["config"] = extension.get("extension")
        credential = {"apiVersion": api, "kind": "ExecCredential", "spec": info}
        env = {**os.environ, "KUBERNETES_EXEC_INFO": json.dumps(credential)}
        env.update({e["name"]: e["value"] for e in spec.get("env") or []})
        try:
            done = subprocess.run(
                command,
                env=env,
                stdin=None if interactive else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                timeout=None if interactive else 120,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            hint = f" ({spec['installHint'].strip()})" if spec.get("installHint") else ""
            raise UnavailableError(f"{self.where}: exec plugin {command[0]!r}: {e}{hint}") from None
        if done.returncode != 0:  # what it said went to stderr
            raise UnavailableError(
                f"{self.where}: exec plugin {command[0]!r} exited {done.returncode}"
            )
        try:
            status = json.loads(done.stdout)["status"]
        except (ValueError, KeyError, TypeError):
            raise UnavailableError(
                f"{self.where}: exec plugin {command[0]!r} printed no ExecCredential status"
            ) from None
        self._token = status.get("token")
        if status.get("clientCertificateData") and status.get("clientKeyData"):
            self._exec_cert = (status["clientCertificateData"], status["clientKeyData"])

    def auth_headers(self) -> dict[str, str]:
        user = self.user
        if user.get("token"):
            return {"Authorization": f"Bearer {user['token']}"}
        if user.get("tokenFile"):  # re-read each time: a rotated token is picked up
            token = _read(self._file(user["tokenFile"])).strip()
            return {"Authorization": f"Bearer {token}"}
        if user.get("username") and user.get("password"):
            pair = f"{user['username']}:{user['password']}".encode()
            return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
        if "exec" in user and self._token is None and self._exec_cert is None:
            self._run_exec()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    # -- requests -------------------------------------------------------------------------

    def _dial(self, timeout: float | None) -> socket.socket:
        """A socket to the API server: through the proxy's CONNECT tunnel if there is one,
        TLS if the server is https."""
        host, port = self.host, self.port
        if self.proxy:
            proxy = urlsplit(self.proxy)
            if proxy.scheme not in ("http", ""):
                raise UnavailableError(f"{self.where}: proxy {self.proxy!r}: only http:// proxies")
            host, port = proxy.hostname or "", proxy.port or 3128
        sock = socket.create_connection((host, port), timeout)
        try:
            if self.proxy:
                _tunnel(sock, f"{self.host}:{self.port}")
            if self.ssl_context is not None:
                name = self.server_name or self.host
                sock = self.ssl_context.wrap_socket(sock, server_hostname=name)
        except BaseException:
            sock.close()
            raise
        return sock

    def _connection(self, timeout: float | None) -> http1.Connection:
        return http1.Connection(lambda: self._dial(timeout), f"{self.host}:{self.port}")

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        return self.prefix + path + (f"?{urlencode(params)}" if params else "")

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One call; the decoded JSON answer. Raises StatusError for a refusal, OSError when
        the API server cannot be reached or does not speak HTTP."""
        data = None if body is None else json.dumps(body).encode()
        with self._lock:
            if self._conn is None:
                self._conn = self._connection(TIMEOUT)
            for attempt in (1, 2):
                headers = {"Accept": "application/json", **self.auth_headers()}
                if data is not None:
                    headers["Content-Type"] = content_type
                response = self._conn.request(method, self.url(path, query), headers, data)
                raw = response.read()
                if response.status == 401 and attempt == 1 and "exec" in self.user:
                    self._token = None  # an expired plugin token: ask the plugin again
                    continue
                if response.status >= 400:
                    raise _status_error(response, raw)
                return json.loads(raw) if raw else {}
            raise AssertionError("unreachable")

    def stream(self, path: str, query: dict[str, Any], timeout: float | None) -> Iterator[bytes]:
        """The lines of a long answer (a watch, a followed log), on a connection of its own."""
        conn = self._connection(timeout)
        try:
            response = conn.request("GET", self.url(path, query), self.auth_headers())
            if response.status >= 400:
                raise _status_error(response, response.read())
            while line := response.readline():
                yield line
        finally:
            conn.close()


def _tunnel(sock: socket.socket, target: str) -> None:
    """Ask an HTTP proxy for a tunnel to ``target`` (host:port) on ``sock``."""
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:  # byte by byte: what follows the head is the server's
        byte = sock.recv(1)
        if not byte or len(head) > 65536:
            raise http1.ProtocolError(f"proxy: no answer to CONNECT {target}")
        head += byte
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise http1.ProtocolError(f"proxy refused CONNECT {target}: {head.splitlines()[0]!r}")


def _status_error(response: http1.Response, raw: bytes) -> StatusError:
    try:
        status = json.loads(raw)
        if not isinstance(status, dict) or status.get("kind") != "Status":
            raise ValueError
    except ValueError:
        text = raw.decode(errors="replace").strip()[:500] or response.reason
        status = {"code": response.status, "message": text}
    status.setdefault("code", response.status)
    return StatusError(status, response.headers)


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    """ssl takes certificates from files only: give it in-memory ones (no copy of the key on
    disk where the kernel allows)."""
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create("kubeconfig"), os.memfd_create("kubeconfig")]
        try:
            for fd, pem in zip(fds, (cert, key), strict=True):
                os.write(fd, pem.encode())
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files = [os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")]
        for path, pem in zip(files, (cert, key), strict=True):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(pem)
        ctx.load_cert_chain(files[0], files[1])


def _env_proxy(host: str, https: bool) -> str | None:
    env = os.environ
    if host in ("localhost", "127.0.0.1", "::1"):  # as Go's ProxyFromEnvironment has it
        return None
    proxy = (env.get("HTTPS_PROXY") or env.get("https_proxy")) if https else None
    proxy = proxy or env.get("HTTP_PROXY") or env.get("http_proxy")
    if not proxy:
        return None
    for entry in (env.get("NO_PROXY") or env.get("no_proxy") or "").split(","):
        entry = entry.strip().lstrip(".")
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return None
    return proxy


def path_of(group: str, plural: str, namespace: str | None, name: str | None = None) -> str:
    """The REST path of a namespaced resource (``group`` "" for core/v1), or of every
    namespace's when ``namespace`` is None."""
    root = "/api/v1" if not group else f"/apis/{group}/v1"
    where = f"/namespaces/{quote(namespace)}" if namespace else ""
    return f"{root}{where}/{plural}" + (f"/{quote(name)}" if name else "")
