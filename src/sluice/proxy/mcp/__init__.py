"""The MCP gateway (to come): an MCP server to clients at `/mcp`, a client of every server."""
