"""`python -m metalens.dashboard ...` (the same options as `metalens dashboard`)."""

import sys

from . import main

sys.exit(main())
