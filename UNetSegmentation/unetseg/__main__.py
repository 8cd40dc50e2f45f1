"""`python -m unetseg …` runs the `unetseg` command line (Slicer's background process uses this)."""

import sys

from unetseg.cli import main

sys.exit(main())
