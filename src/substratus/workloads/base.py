"""The generic base image (``substratusai/base``): runs ``spec.command`` in the platform's
Python environment, under the container contract, like the seed's stock notebook image.

``python -m substratus.workloads.base CMD [ARGS...]`` replaces itself with CMD.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m substratus.workloads.base COMMAND [ARGS...]", file=sys.stderr)
        return 2
    try:
        os.execvp(args[0], args)
    except FileNotFoundError:
        print(f"command not found: {args[0]}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
