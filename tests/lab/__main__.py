"""Run the lab driver: `python -m lab COMMAND` (see lab.cli)."""

import sys

from lab.cli import main

sys.exit(main())
