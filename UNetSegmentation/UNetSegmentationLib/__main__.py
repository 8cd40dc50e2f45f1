"""`python -m UNetSegmentationLib …` runs the `unetseg` command line (Slicer's background process uses this)."""

import sys

from .cli import main

sys.exit(main())
