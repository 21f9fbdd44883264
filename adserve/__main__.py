"""`python -m adserve` and the `adserve` script: the command line lives in `adserve.cli`."""

from __future__ import annotations

import sys

from adserve.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
