"""`python -m loyalty_engine`: the same as the `loyalty-engine` command."""

import sys

from loyalty_engine.cli import main

sys.exit(main())
