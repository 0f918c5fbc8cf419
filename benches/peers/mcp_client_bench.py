"""Tool round trips with the Python `mcp` client (2.3.0), for benches/mcp.rs.

    python mcp_client_bench.py [OPTIONS] stdio COMMAND [ARG ...]
    python mcp_client_bench.py [OPTIONS] streamable-http URL

Options:
    --tool NAME         the tool to call (default: add)
    --arguments JSON    its arguments, a JSON object (default: {"a": 2, "b": 3})
    --expect TEXT       fail unless the first content block's text contains TEXT
    -n N                timed calls (default: 500)

Calls the tool N times after 20 warm-up calls, one at a time, fails on a tool
error, and prints one JSON line:
{"transport", "tool", "n", "p50_us", "p99_us", "mean_us"}.
"""

import argparse
import asyncio
import json
import statistics
import time

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

WARM_UP = 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tool", default="add")
    parser.add_argument("--arguments", type=json.loads, default={"a": 2, "b": 3})
    parser.add_argument("--expect")
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("transport", choices=["stdio", "streamable-http"])
    # stdio: the server's command line; streamable-http: its URL.
    parser.add_argument("target", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if not args.target:
        parser.error("give the server's command (stdio) or URL (streamable-http)")
    return args


def check(result, args: argparse.Namespace) -> None:
    assert not result.is_error, f"{args.tool} failed: {result.content}"
    if args.expect is not None:
        text = result.content[0].text
        assert args.expect in text, f"{args.expect!r} not in {text!r}"


async def measure(session: ClientSession, args: argparse.Namespace) -> list[float]:
    await session.initialize()
    for _ in range(WARM_UP):
        check(await session.call_tool(args.tool, args.arguments), args)
    out = []
    for _ in range(args.n):
        t = time.perf_counter()
        result = await session.call_tool(args.tool, args.arguments)
        out.append((time.perf_counter() - t) * 1e6)
        # Checked outside the timed span, as the Rust side does.
        check(result, args)
    return out


async def main() -> None:
    args = parse_args()
    if args.transport == "stdio":
        command, *command_args = args.target
        params = StdioServerParameters(command=command, args=command_args)
        async with stdio_client(params) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                samples = await measure(session, args)
    else:
        async with streamable_http_client(args.target[0]) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                samples = await measure(session, args)
    samples.sort()
    print(
        json.dumps(
            {
                "transport": args.transport,
                "tool": args.tool,
                "n": len(samples),
                "p50_us": samples[len(samples) // 2],
                "p99_us": samples[min(len(samples) - 1, len(samples) * 99 // 100)],
                "mean_us": statistics.fmean(samples),
            }
        )
    )


asyncio.run(main())
