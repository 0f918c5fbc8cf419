"""Pipecat's voice-to-voice latency on the same questions and models as
benches/live_calls.rs (issue 6), for its side-by-side column.

The pipeline is Pipecat 1.14's usual cascade:
  live source -> Silero VAD -> Whisper (faster-whisper) -> user aggregator
  -> OpenAI LLM (parlor's /v1/chat/completions) -> Piper -> sink
The source plays each 16 kHz WAV question as 20 ms InputAudioRawFrames in
real time, then keeps sending silence (a live microphone never stops) until
the answer is spoken, then the next question. Per turn:
  - caller_ms: from the question's last voiced sample (as pushed; the same
    definition as live_calls.rs's caller-felt wait) to the first TTS audio
    frame out of Piper;
  - vad_ms: from the VAD's stop decision (VADUserStoppedSpeakingFrame) to
    that frame.
Prints one JSON object per turn and a summary line ({"summary": ...}).

Usage (from the project root, parlor serve running a chat pipeline):
  ~/.cache/parlor/peers-venv/bin/python benches/peers/pipecat_v2v.py \
      --url http://127.0.0.1:8080 q1.wav q2.wav ...
Needs `bash benches/peers/setup.sh` and `bash models/setup.sh`. Loads every
model from local files; nothing is downloaded.
"""

import argparse
import asyncio
import json
import time
from pathlib import Path

from pipecat_common import (
    LiveSource,
    add_cascade_args,
    cascade,
    live_worker,
    parse_args,
    percentile,
    read_wav,
    run_worker,
)


from pipecat.frames.frames import (
    EndFrame,
    LLMFullResponseEndFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor


class Turn:
    def __init__(self, question: str):
        self.question = question
        self.speech_end = None  # last voiced sample pushed (perf_counter)
        self.vad_stop = None  # VADUserStoppedSpeakingFrame seen
        self.first_audio = None  # first TTS audio frame out of Piper
        self.heard = ""  # Whisper's transcript
        self.reply = []  # TTS text
        self.llm_done = False
        self.tts_open = 0
        self.done = asyncio.Event()


class Probe(FrameProcessor):
    """Passes everything on; notes the VAD stop and the transcript of the
    current turn. Sits right after the VAD (and after the STT)."""

    def __init__(self, bench, **kwargs):
        super().__init__(**kwargs)
        self.bench = bench

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        turn = self.bench.turn
        if turn is not None:
            if isinstance(frame, VADUserStoppedSpeakingFrame) and turn.vad_stop is None:
                turn.vad_stop = time.perf_counter()
            elif isinstance(frame, TranscriptionFrame):
                turn.heard += frame.text
        await self.push_frame(frame, direction)


class Sink(FrameProcessor):
    """The output: timestamps the first TTS audio of a turn and decides when
    the answer is over (the LLM finished and every TTS context stopped)."""

    def __init__(self, bench, **kwargs):
        super().__init__(**kwargs)
        self.bench = bench

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        turn = self.bench.turn
        if turn is not None and direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, TTSAudioRawFrame) and turn.first_audio is None:
                turn.first_audio = time.perf_counter()
            elif isinstance(frame, TTSTextFrame):
                turn.reply.append(frame.text)
            elif isinstance(frame, TTSStartedFrame):
                turn.tts_open += 1
            elif isinstance(frame, TTSStoppedFrame):
                turn.tts_open -= 1
            elif isinstance(frame, LLMFullResponseEndFrame):
                turn.llm_done = True
            if turn.llm_done and turn.tts_open <= 0 and turn.first_audio is not None:
                turn.done.set()
        await self.push_frame(frame, direction)


class Bench:
    def __init__(self):
        self.turn = None


async def run(args) -> list:
    bench = Bench()
    c = cascade(args)
    pipeline = Pipeline(
        [c.vad, Probe(bench), c.stt, Probe(bench), c.pair.user(), c.llm, c.tts, Sink(bench), c.pair.assistant()]
    )
    worker, started = live_worker(pipeline)

    questions = [(Path(p).stem, read_wav(p)) for p in args.wavs]
    results = []

    async def drive():
        await asyncio.wait_for(started.wait(), timeout=120)
        source = LiveSource(worker)
        await source.silence(0.5)  # room tone before the first question
        for run in range(args.runs):
            for name, samples in questions:
                turn = Turn(name)
                bench.turn = turn
                turn.speech_end = await source.speak(samples)
                # Silence until the answer is spoken (or a timeout).
                deadline = time.perf_counter() + args.turn_timeout
                while not turn.done.is_set() and time.perf_counter() < deadline:
                    await source.silence(0.02)
                await source.silence(args.gap)
                bench.turn = None
                result = {
                    "peer": "pipecat",
                    "run": run,
                    "question": name,
                    "heard": turn.heard.strip(),
                    "reply": " ".join(t.strip() for t in turn.reply),
                    "caller_ms": None,
                    "vad_ms": None,
                }
                if turn.first_audio is not None and turn.speech_end is not None:
                    result["caller_ms"] = round((turn.first_audio - turn.speech_end) * 1e3, 1)
                if turn.first_audio is not None and turn.vad_stop is not None:
                    result["vad_ms"] = round((turn.first_audio - turn.vad_stop) * 1e3, 1)
                print(json.dumps(result), flush=True)
                results.append(result)
        await worker.queue_frame(EndFrame())

    await run_worker(worker, drive())
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wavs", nargs="+", help="16 kHz mono 16-bit WAV questions, in order")
    add_cascade_args(ap, instructions="benches/pipelines/chat.md", stop_secs=0.2, turn_timeout=30.0)
    ap.add_argument("--runs", type=int, default=1, help="rounds over the questions")
    args = parse_args(ap)
    results = asyncio.run(run(args))
    caller = [r["caller_ms"] for r in results if r["caller_ms"] is not None]
    vad = [r["vad_ms"] for r in results if r["vad_ms"] is not None]
    print(json.dumps({"summary": {
        "peer": "pipecat",
        "turns": len(results),
        "answered": len(caller),
        "caller_p50_ms": percentile(caller, 50),
        "caller_p95_ms": percentile(caller, 95),
        "vad_p50_ms": percentile(vad, 50),
        "vad_p95_ms": percentile(vad, 95),
        "stop_secs": args.stop_secs,
    }}), flush=True)


if __name__ == "__main__":
    main()
