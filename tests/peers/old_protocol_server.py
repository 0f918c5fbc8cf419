"""A bare JSON-RPC MCP server over stdio that only speaks 2024-11-05,
whatever the client offers: the oldest revision parlor must still talk to.
No SDK: it answers initialize, tools/list and tools/call (`add`)."""

import json
import sys

for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    method, rid = msg.get("method"), msg["id"]
    if method == "initialize":
        result = {
            "protocolVersion": "2024-11-05",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "old-peer", "version": "0.1"},
        }
    elif method == "tools/list":
        result = {"tools": [{"name": "add", "description": "Add.", "inputSchema": {
            "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}]}
    elif method == "tools/call":
        args = msg["params"].get("arguments") or {}
        result = {"content": [{"type": "text", "text": str(args["a"] + args["b"])}]}
    elif method == "ping":
        result = {}
    else:
        print(json.dumps({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no such method"}}), flush=True)
        continue
    print(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}), flush=True)
