"""`python -m revision` runs the CLI."""

import sys

from revision.cli import main

sys.exit(main())
