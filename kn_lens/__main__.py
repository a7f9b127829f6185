"""``python -m kn_lens``: the ``kn-lens`` command line (see :mod:`kn_lens.cli`)."""

import sys

from kn_lens.cli import main

if __name__ == "__main__":
    sys.exit(main())
