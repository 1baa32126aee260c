"""``python -m nfpi <stage> [options]``: run one workflow stage (:mod:`nfpi.stages`)."""

import sys

from nfpi.stages import run

if __name__ == "__main__":
    sys.exit(run())
