"""The `sub` command line."""

import sys

# httpx imports its own command line when it is imported (click, pygments, rich's syntax and
# progress: ~15-30 ms of every `sub` start, measured in benchmarks/cli_startup.py). sub never
# runs it; httpx falls back to a stub when that import fails.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
