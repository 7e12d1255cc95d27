"""`python -m ops.services ...`: runs before any virtualenv exists, so it needs nothing but the standard library."""

import sys

from ops.services.cli import main

sys.exit(main())
