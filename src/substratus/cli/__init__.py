"""The `sub` command line."""

import sys

# httpx imports its own command line when it is imported (click, pygments, rich's syntax and
# progress: ~15-30 ms added to the commands that use httpx: apply of a URL or an upload, the
# notebook loop). sub never runs it; httpx falls back to a stub when that import fails.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
