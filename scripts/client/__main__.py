"""`python -m scripts.client ...`: the command-line client (scripts/client/cli.py)."""

import sys

from scripts.client.cli import main

sys.exit(main())
