"""``python -m watchkeeper``: the same entry point as the console script."""

import sys

from watchkeeper.cli import main

sys.exit(main())
