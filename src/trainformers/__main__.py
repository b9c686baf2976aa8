"""`python -m trainformers`: the `trainformers` command, as `accelerate launch -m trainformers train ...` runs it."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
