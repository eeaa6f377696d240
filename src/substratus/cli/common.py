"""What every `sub` command shares: exit codes, consoles, the client, error handling."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

from substratus.api.errors import ValidationFailed
from substratus.core.client import (
    Client,
    ClientError,
    InvalidError,
    NotFoundError,
    UnavailableError,
)

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INVALID, EXIT_TIMEOUT, EXIT_UNAVAILABLE = (
    1,
    2,
    3,
    4,
    5,
    6,
)

if TYPE_CHECKING:
    from rich.console import Console


class _Deferred:
    """A rich Console, made on first use: importing rich is a fifth of a start-up that a
    command printing plain text (`get`, `version`) does without (see ``echo``)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def _made(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._made(), name)

    # Dunders are looked up on the type: rich's Live batches its refreshes in `with console:`.
    def __enter__(self) -> Console:
        return self._made().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._made().__exit__(*exc)


err = cast("Console", _Deferred(stderr=True))
out = cast("Console", _Deferred(highlight=False, soft_wrap=True))
T = TypeVar("T")


class WaitFailed(Exception):
    """The object waited for failed (a job's last attempt, a build)."""


class WaitTimeout(Exception):
    pass


def echo(text: str, end: str = "\n", stderr: bool = False) -> None:
    """Plain text to stdout (or stderr), exactly as given (no markup, emoji codes or
    wrapping), at once."""
    stream = sys.stderr if stderr else sys.stdout
    stream.write(text + end)
    stream.flush()


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    raise SystemExit(code)  # typer lets it through as it is


# Set by the global options (`sub --context NAME --kubeconfig FILE ...`).
CLUSTER: dict[str, str | None] = {"context": None, "kubeconfig": None}


def chosen_context(context: str | None) -> str | None:
    """The cluster context the user asked for, if any: the flag, else SUBSTRATUS_CONTEXT."""
    return context or os.environ.get("SUBSTRATUS_CONTEXT") or None


def client(start: bool = False) -> Client:
    """The control plane's client: a cluster when a context is chosen (``--context`` or
    ``SUBSTRATUS_CONTEXT``), else the local supervisor, the default. Only commands that change
    state (``start``) may start the supervisor; reading commands against a stopped one fail
    with exit 6."""
    context = chosen_context(CLUSTER["context"])
    if context:
        from substratus.cli.kube import KubeClient

        return KubeClient(context, CLUSTER["kubeconfig"])
    from substratus.runtimes.local.client import LocalClient

    return LocalClient(autostart=start)


def runtime_answers() -> bool:
    """Whether the chosen runtime checks what it is sent without being started first: a
    cluster's API server (asked in any case), or a running local supervisor."""
    if chosen_context(CLUSTER["context"]):
        return True
    from substratus.runtimes.local.client import supervisor_running
    from substratus.runtimes.local.paths import LocalPaths

    return supervisor_running(LocalPaths.from_env())


def guarded(fn: Callable[[], T]) -> T:
    """Run ``fn``, turning client errors into messages and the documented exit codes."""
    from substratus.cli.targets import UsageError

    try:
        return fn()
    except UsageError as exc:
        fail(str(exc), EXIT_USAGE)
    except ValidationFailed as exc:
        fail(str(exc), EXIT_INVALID)
    except InvalidError as exc:
        fail(str(exc), EXIT_INVALID)
    except NotFoundError as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except UnavailableError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except WaitTimeout as exc:
        fail(str(exc), EXIT_TIMEOUT)
    except (WaitFailed, ClientError) as exc:
        fail(str(exc), EXIT_FAILED)
    except Exception as exc:
        # Storage raised it only if it was imported: it is not, for most commands.
        store = sys.modules.get("substratus.storage.store")
        if store is not None and isinstance(exc, store.StorageError):
            fail(str(exc), EXIT_FAILED)
        if isinstance(exc, ValueError | OSError):
            fail(str(exc), EXIT_INVALID)
        raise
    except KeyboardInterrupt:  # Ctrl-C ends a watch, a follow or a forward: no traceback
        raise SystemExit(130) from None


def parse_duration(text: str) -> float:
    import re

    from substratus.cli.targets import UsageError

    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not m:
        raise UsageError(f"--timeout: {text!r} is not a duration like 30s, 5m or 1h")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def show_version(client_only: bool) -> None:
    """The client's version, and what serves it: the local supervisor or the cluster."""
    from substratus import __version__

    echo(f"Client Version: substratus {__version__}")
    if not client_only:
        guarded(lambda: echo(f"Server Version: {client().server_version()}"))
