"""The bench's spoken tasks through Pipecat, for `parlor bench --peers
pipecat` (issue 8): the same audio, the same MCP servers and the same
instructions as the parlor pipeline beside it, so the report has a Pipecat
row measured in the same run.

The pipeline is Pipecat 1.14's usual cascade with MCP tools:
  live source -> Silero VAD -> Whisper (faster-whisper tiny.en int8)
  -> user aggregator -> OpenAI LLM (parlor's /v1/chat/completions, the
  pipeline's own local model) with the MCP servers' tools (Pipecat's
  MCPClient over stdio) -> Piper (joe-medium) -> sink
Each task is one conversation: the context is reset to the instructions
before it. Its 16 kHz WAV is played as 20 ms frames in real time, then
silence (a live microphone never stops) until the answer has been spoken
and nothing has moved for a second, or --turn-timeout. Before the first
scored task, the first task is said once unscored (--no-warm-up skips it):
parlor's pipelines evaluate their planner's prompt before their first call,
and this does the same for the served model's prompt cache (the turn's CPU
time is counted in the row's).

Prints one JSON object per task (stdout; Pipecat's log goes to stderr):
  task, round, transcript (what Whisper heard), calls ([{server, tool,
  arguments}]), reply (the text Piper spoke), reply_wav (the audio Piper
  made, in --out), voice_to_voice_ms (the VAD's stop decision to the first
  audio out of Piper, parlor's definition), caller_ms (from the question's
  last voiced sample), stages ({stt, planner, tts}: first output after the
  VAD's decision), usage (parlor's Usage fields), error.
Then a last line, {"summary": {"peak_rss_mib": ...}}: this process's peak
resident memory (/proc/self/status VmHWM).

Usage (from the project root; `parlor bench` runs it for you):
  ~/.cache/parlor/peers-venv/bin/python benches/peers/pipecat_tasks.py \
      --url http://127.0.0.1:8080 --out /tmp/pipecat \
      --mcp '{"orders": {"command": "target/release/parlor-mcp-orders", "args": [...]}}' \
      --instructions pipelines/prompts/shop.md --limit 3
Needs `bash benches/peers/setup.sh` and `bash models/setup.sh`.
"""

import argparse
import asyncio
import json
import time
from pathlib import Path

from pipecat_common import (
    RATE,
    LiveSource,
    add_cascade_args,
    cascade,
    live_worker,
    parse_args,
    read_wav,
    run_worker,
    voiced_end,
    write_wav,
)

from mcp import StdioServerParameters

from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    EndFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import LLMUsageMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.mcp_service import MCPClient

# An answer is over once nothing has moved for this long after its audio.
SETTLE_S = 1.0


class Turn:
    """What one task's conversation showed."""

    def __init__(self):
        self.vad_stop = None  # VADUserStoppedSpeakingFrame seen (perf_counter)
        self.first = {}  # stage -> perf_counter of its first output
        self.heard = []  # Whisper's transcripts
        self.reply = []  # the text Piper spoke
        self.audio = bytearray()  # Piper's audio, 16-bit mono
        self.audio_rate = 0
        self.transcribed_s = 0.0  # the question up to its last voiced sample
        self.calls = []
        self.input_tokens = 0
        self.cached_input_tokens = 0  # of input_tokens (OpenAI counts them inside)
        self.output_tokens = 0
        self.llm_active = False
        self.tts_open = 0
        self.last_moved = time.perf_counter()

    def note(self, stage: str):
        self.first.setdefault(stage, time.perf_counter())

    def settled(self) -> bool:
        return (
            "tts" in self.first
            and not self.llm_active
            and self.tts_open <= 0
            and time.perf_counter() - self.last_moved > SETTLE_S
        )


class Observer(FrameProcessor):
    """Passes every frame on and notes, for the current turn, what the
    processor before it produced (`after` names it)."""

    def __init__(self, bench, after: str, **kwargs):
        super().__init__(**kwargs)
        self.bench = bench
        self.after = after

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        turn = self.bench.turn
        if turn is not None and direction == FrameDirection.DOWNSTREAM:
            self.observe(turn, frame)
        await self.push_frame(frame, direction)

    def observe(self, turn: Turn, frame):
        if self.after == "vad":
            if isinstance(frame, VADUserStoppedSpeakingFrame) and turn.vad_stop is None:
                turn.vad_stop = time.perf_counter()
        elif self.after == "stt":
            if isinstance(frame, TranscriptionFrame):
                turn.note("stt")
                turn.heard.append(frame.text.strip())
        elif self.after == "llm":
            if isinstance(frame, LLMTextFrame) and frame.text.strip():
                turn.note("planner")
            elif isinstance(frame, MetricsFrame):
                for data in frame.data:
                    if isinstance(data, LLMUsageMetricsData):
                        turn.input_tokens += data.value.prompt_tokens or 0
                        turn.cached_input_tokens += data.value.cache_read_input_tokens or 0
                        turn.output_tokens += data.value.completion_tokens or 0
        else:  # after tts: the output
            moved = True
            if isinstance(frame, TTSAudioRawFrame):
                turn.note("tts")
                turn.audio += frame.audio
                turn.audio_rate = frame.sample_rate
            elif isinstance(frame, TTSTextFrame):
                turn.reply.append(frame.text.strip())
            elif isinstance(frame, TTSStartedFrame):
                turn.tts_open += 1
            elif isinstance(frame, TTSStoppedFrame):
                turn.tts_open -= 1
            elif isinstance(frame, LLMFullResponseStartFrame):
                turn.llm_active = True
            elif isinstance(frame, LLMFullResponseEndFrame):
                turn.llm_active = False
            elif not isinstance(frame, (FunctionCallInProgressFrame, FunctionCallResultFrame)):
                moved = False
            if moved:
                turn.last_moved = time.perf_counter()


class Bench:
    def __init__(self):
        self.turn = None


def load_tasks(tasks_dir: Path, limit: int | None) -> list:
    data = json.loads((tasks_dir / "tasks.json").read_text())
    tasks = data["tasks"]
    return tasks[:limit] if limit is not None else tasks


async def mcp_tools(servers: dict) -> tuple[ToolsSchema, dict]:
    """Every server's tools, and which server each tool name belongs to."""
    tools, owner = [], {}
    for name, server in servers.items():
        client = MCPClient(
            server_params=StdioServerParameters(
                command=server["command"], args=server.get("args", [])
            )
        )
        schema = await client.tools()
        for tool in schema.standard_tools:
            if tool.name in owner:
                raise SystemExit(f"tool {tool.name} is offered by {owner[tool.name]} and {name}")
            owner[tool.name] = name
            tools.append(tool)
    return ToolsSchema(standard_tools=tools), owner


def result_of(task: dict, rnd: int, turn: Turn, spoken_end, out: Path, error) -> dict:
    ms = lambda t: round((t - turn.vad_stop) * 1e3, 1) if t and turn.vad_stop else None
    reply_wav = None
    if turn.audio:
        reply_wav = str(out / f"{task['id']}.{rnd}.wav")
        write_wav(reply_wav, bytes(turn.audio), turn.audio_rate)
    reply = " ".join(t for t in turn.reply if t)
    first_audio = turn.first.get("tts")
    return {
        "task": task["id"],
        "round": rnd,
        "transcript": " ".join(t for t in turn.heard if t),
        "calls": turn.calls,
        "reply": reply,
        "reply_wav": reply_wav,
        "voice_to_voice_ms": ms(first_audio),
        "caller_ms": round((first_audio - spoken_end) * 1e3, 1)
        if first_audio and spoken_end
        else None,
        "stages": {s: ms(t) for s, t in turn.first.items()},
        "usage": {
            "input_text_tokens": turn.input_tokens,
            "cached_input_text_tokens": turn.cached_input_tokens,
            "output_text_tokens": turn.output_tokens,
            "transcribed_seconds": turn.transcribed_s,
            "spoken_characters": len(reply),
            "spoken_seconds": len(turn.audio) / 2 / turn.audio_rate if turn.audio_rate else 0.0,
        },
        "error": error,
    }


async def run(args):
    bench = Bench()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = load_tasks(Path(args.tasks), args.limit)
    tools, owner = await mcp_tools(json.loads(args.mcp))
    c = cascade(args, tools)

    @c.llm.event_handler("on_function_calls_started")
    async def _calls(_service, function_calls):
        if bench.turn is not None:
            for call in function_calls:
                bench.turn.calls.append(
                    {
                        "server": owner.get(call.function_name, "?"),
                        "tool": call.function_name,
                        "arguments": call.arguments,
                    }
                )

    pipeline = Pipeline(
        [
            c.vad,
            Observer(bench, "vad"),
            c.stt,
            Observer(bench, "stt"),
            c.pair.user(),
            c.llm,
            Observer(bench, "llm"),
            c.tts,
            Observer(bench, "tts"),
            c.pair.assistant(),
        ]
    )
    worker, started = live_worker(
        pipeline, params=PipelineParams(enable_metrics=True, enable_usage_metrics=True)
    )

    async def play(source, task) -> tuple[Turn, float | None, str | None]:
        """Say `task` in a new conversation and wait for the reply to settle."""
        # A new conversation (the instructions are the service's).
        c.context.set_messages([])
        samples = read_wav(str(Path(args.tasks) / task["audio"]))
        turn = Turn()
        turn.transcribed_s = voiced_end(samples) / RATE
        bench.turn = turn
        spoken_end = await source.speak(samples)
        deadline = time.perf_counter() + args.turn_timeout
        while not turn.settled() and time.perf_counter() < deadline:
            await source.silence(0.02)
        bench.turn = None
        error = None
        if "tts" not in turn.first:
            error = f"no reply audio within {args.turn_timeout:.0f} s"
        elif not turn.settled():
            error = f"the reply was still going after {args.turn_timeout:.0f} s"
        await source.silence(args.gap)
        return turn, spoken_end, error

    async def drive():
        await asyncio.wait_for(started.wait(), timeout=120)
        source = LiveSource(worker)
        await source.silence(0.5)  # room tone before the first task
        if args.warm_up and tasks:
            # parlor's pipelines evaluate their planner's prompt (instructions
            # and tools) before their first call; this unscored turn does the
            # same for the served model's prefix cache, so the first scored
            # task does not pay for a cold prompt.
            try:
                await play(source, tasks[0])
            except (OSError, ValueError):
                pass  # the scored run reports the unreadable file
        for rnd in range(args.repeat):
            for task in tasks:
                try:
                    turn, spoken_end, error = await play(source, task)
                except (OSError, ValueError) as e:
                    print(json.dumps(result_of(task, rnd, Turn(), None, out, str(e))), flush=True)
                    continue
                print(json.dumps(result_of(task, rnd, turn, spoken_end, out, error)), flush=True)
        await worker.queue_frame(EndFrame())

    await run_worker(worker, drive())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_cascade_args(ap, instructions="pipelines/prompts/shop.md", stop_secs=0.4, turn_timeout=60.0)
    ap.add_argument("--tasks", default="benches/tasks", help="the dataset directory")
    ap.add_argument("--limit", type=int, help="only the first N tasks")
    ap.add_argument(
        "--no-warm-up",
        dest="warm_up",
        action="store_false",
        help="skip the unscored first turn that warms the model's prompt cache",
    )
    ap.add_argument("--repeat", type=int, default=1, help="rounds over the tasks")
    ap.add_argument("--out", required=True, help="where the reply WAVs go")
    ap.add_argument("--mcp", required=True, help='{"name": {"command": ..., "args": [...]}} (stdio)')
    args = parse_args(ap)
    asyncio.run(run(args))
    print(json.dumps({"summary": {"peak_rss_mib": peak_rss_mib()}}), flush=True)


def peak_rss_mib() -> float | None:
    """This process's peak resident memory since it started Python. Not
    getrusage: Linux carries the forking parent's peak across exec, so a
    child of a big process would report its parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


if __name__ == "__main__":
    main()
