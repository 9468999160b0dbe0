"""``python -m server_bootstrap plan|up|status|logs|down|doctor``: the same as ``cvload bootstrap``."""

import sys

from server_bootstrap.cli import main

sys.exit(main())
