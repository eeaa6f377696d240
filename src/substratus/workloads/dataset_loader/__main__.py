"""``python -m substratus.workloads.dataset_loader``: load the rows into ``artifacts/``."""

import sys

from substratus.workloads.dataset_loader.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
