"""``python -m ssogen``: the same command line as the ``ssogen`` script."""

import sys

from ssogen.cli import main

# vLLM's CPU workers are spawned processes that re-import the main module: the guard keeps them
# from starting a second build.
if __name__ == "__main__":
    sys.exit(main())
