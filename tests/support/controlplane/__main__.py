"""``python -m tests.support.controlplane up|down|serve``: the commands of :mod:`.cli`."""

import sys

from tests.support.controlplane import cli

sys.exit(cli.main())
