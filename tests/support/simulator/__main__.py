"""``python -m tests.support.simulator``: the standalone simulator of :mod:`.cli`."""

import sys

from tests.support.simulator import cli

sys.exit(cli.main())
