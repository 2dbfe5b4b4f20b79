"""Run the command line as `python -m mailcow_ha.cli`, as `make demo` does."""

import sys

from mailcow_ha.cli import main

sys.exit(main())
