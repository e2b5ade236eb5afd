"""``python -m optimum_wc``: the ``optimum-wc`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
