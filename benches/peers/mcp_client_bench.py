"""Tool round trips with the Python `mcp` client (2.3.0), for benches/mcp.rs.

    python mcp_client_bench.py stdio PYTHON SERVER_SCRIPT N
    python mcp_client_bench.py streamable-http URL N

Calls `add(a=2, b=3)` N times after 20 warm-up calls, one at a time, and
prints one JSON line: {"transport", "n", "p50_us", "p99_us", "mean_us"}.
"""

import asyncio
import json
import statistics
import sys
import time

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client


async def measure(session: ClientSession, n: int) -> list[float]:
    await session.initialize()
    for _ in range(20):
        await session.call_tool("add", {"a": 2, "b": 3})
    out = []
    for _ in range(n):
        t = time.perf_counter()
        result = await session.call_tool("add", {"a": 2, "b": 3})
        out.append((time.perf_counter() - t) * 1e6)
        assert result.content[0].text == "5"
    return out


async def main() -> None:
    transport = sys.argv[1]
    if transport == "stdio":
        python, script, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
        params = StdioServerParameters(command=python, args=[script, "stdio"])
        async with stdio_client(params) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                samples = await measure(session, n)
    else:
        url, n = sys.argv[2], int(sys.argv[3])
        async with streamable_http_client(url) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                samples = await measure(session, n)
    samples.sort()
    print(
        json.dumps(
            {
                "transport": transport,
                "n": len(samples),
                "p50_us": samples[len(samples) // 2],
                "p99_us": samples[min(len(samples) - 1, len(samples) * 99 // 100)],
                "mean_us": statistics.fmean(samples),
            }
        )
    )


asyncio.run(main())
