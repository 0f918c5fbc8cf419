"""An MCP server written with the Python `mcp` SDK (2.3.0), a peer parlor's
client did not write. Used by tests/mcp.rs and benches/mcp.rs.

    python py_mcp_server.py stdio
    python py_mcp_server.py sse PORT            # /sse + /messages/
    python py_mcp_server.py streamable-http PORT  # /mcp
"""

import asyncio
import os
import sys

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("py-peer", instructions="A test peer for parlor.")


@server.tool(description="Add two integers.")
def add(a: int, b: int) -> str:
    return str(a + b)


@server.tool(description="Echo the text back.")
def echo(text: str) -> str:
    return text


@server.tool(description="The value of an environment variable, or <unset>.")
def env(name: str) -> str:
    return os.environ.get(name, "<unset>")


@server.tool(description="Always fails: a tool error, not a protocol error.")
def fail(reason: str) -> str:
    raise ValueError(f"failed on purpose: {reason}")


@server.tool(description="Sleep for `seconds`, then answer.")
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


@server.tool(description="Kill this server process mid-call.")
def crash() -> str:
    os._exit(3)


@server.tool(description="Add a tool named `name` and announce the list change.")
async def grow(name: str, ctx: Context) -> str:
    def dynamic() -> str:
        return f"I am {name}"

    server.add_tool(dynamic, name=name, description=f"Added at run time: {name}.")
    await ctx.session.send_tool_list_changed()
    return f"added {name}"


@server.resource("note://greeting", description="A short greeting.", mime_type="text/plain")
def greeting() -> str:
    return "Hello from the Python peer."


@server.resource("note://long", description="Two thousand letters.", mime_type="text/plain")
def long_note() -> str:
    return "x" * 2000


@server.prompt(description="A system prompt for a persona.")
def persona(name: str, tone: str = "friendly") -> str:
    return f"You are {name}. Answer in a {tone} tone."


if __name__ == "__main__":
    transport = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run(transport, host="127.0.0.1", port=int(sys.argv[2]))
