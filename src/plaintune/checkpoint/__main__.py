"""`python -m plaintune.checkpoint inspect|convert ...`: the command lives in command.py."""

import sys

from plaintune.checkpoint.command import main

sys.exit(main())
