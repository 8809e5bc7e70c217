"""`python -m proxy`: the same as the `channels-proxy` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
