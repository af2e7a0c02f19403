"""The MCP gateway: an MCP server to callers at `/mcp`, an MCP client of every configured server.

`transport` (Streamable HTTP to callers, both protocol eras; `clients` holds their sessions and
notification streams) hands each request to `gateway` (the methods), which reads every server's
lists through `lists` (cached per server) and calls tools through `results` (cached results)
and `connection` (one per upstream server). `catalog` merges and names (pure), `jsonrpc` reads
and writes messages (pure).
"""
