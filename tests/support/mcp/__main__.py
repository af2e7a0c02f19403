"""``python -m tests.support.mcp``: one test MCP server, see :mod:`.cli`."""

import sys

from tests.support.mcp import cli

sys.exit(cli.main())
