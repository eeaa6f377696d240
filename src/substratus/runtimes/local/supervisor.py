"""The local supervisor process: ``python -m substratus.runtimes.local.supervisor``.

One per SUBSTRATUS_HOME (an exclusive lock on a file guarantees it). It outlives the CLI that
started it; if it is killed, the next one adopts the workloads still running.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading

from substratus.core.retry import RetryPolicy
from substratus.runtimes.local.controller import Controller
from substratus.runtimes.local.db import StateDB
from substratus.runtimes.local.httpapi import UnixHTTPServer
from substratus.runtimes.local.paths import LocalPaths
from substratus.runtimes.local.service import LocalService


def main() -> int:
    paths = LocalPaths.from_env()
    paths.ensure()
    logging.basicConfig(
        level=os.environ.get("SUBSTRATUS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    lock = open(paths.lockfile, "w")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"a supervisor already runs for {paths.home}", file=sys.stderr)
        return 1
    db = StateDB(paths.db)
    ctl = Controller(paths, db, RetryPolicy.from_env(os.environ))
    stopping = threading.Event()

    def shutdown() -> None:
        if stopping.is_set():
            return
        stopping.set()
        logging.getLogger("substratus.supervisor").info("stopping workloads and exiting")
        ctl.stop(stop_workloads=True)
        server.shutdown()

    server = UnixHTTPServer(paths.socket, LocalService(db, ctl), shutdown)
    ctl.start()
    paths.pidfile.write_text(str(os.getpid()))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: threading.Thread(target=shutdown, daemon=True).start())
    logging.getLogger("substratus.supervisor").info("listening on %s", paths.socket)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        paths.socket.unlink(missing_ok=True)
        paths.pidfile.unlink(missing_ok=True)
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
