"""``python -m substratus.workloads.server``: serve the mounted model."""

import sys

from substratus.workloads.server.app import main

if __name__ == "__main__":
    sys.exit(main())
