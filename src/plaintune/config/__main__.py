"""`python -m plaintune.config [--update-readme]`: print (or rewrite) the config reference."""
import sys

from plaintune.config.load import main

sys.exit(main())
