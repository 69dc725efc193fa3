"""`python -m plaintune.config [--update-docs]`: print the config reference (or rewrite docs/config.md)."""

import sys

from plaintune.config.load import main

sys.exit(main())
