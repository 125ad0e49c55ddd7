"""Entry point: `python search.py ...` is the same CLI as the `ggt-search` command."""

import sys

from ggt_search.cli import main

if __name__ == "__main__":
    sys.exit(main())
