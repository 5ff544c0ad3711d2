"""`python -m revision` runs the CLI."""

import sys

from revision.syspath import without_checkout_root

sys.path[:] = without_checkout_root(sys.path)

try:
    from revision.cli import main
except KeyboardInterrupt:  # Ctrl-C while the interpreter loads the CLI: quiet, as inside main()
    sys.exit(130)

sys.exit(main())
