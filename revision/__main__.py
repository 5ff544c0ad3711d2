"""`python -m revision` runs the CLI."""

import sys

try:
    from revision.cli import main
except KeyboardInterrupt:  # Ctrl-C while the interpreter loads the CLI: quiet, as inside main()
    sys.exit(130)

sys.exit(main())
