"""What the Pipecat peers share (pipecat_v2v.py for benches/live_calls.rs,
pipecat_tasks.py for `parlor bench --peers pipecat`): the models loaded from
local files, the WAV reader, the live-paced audio source, and the nearest-rank
percentile parlor uses.
"""

import json
import os
import sys
import time
import urllib.request
import wave

# Never reach for a model hub: every weight below is a local path.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import InputAudioRawFrame
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.piper.tts import PiperTTSService
from pipecat.services.whisper.stt import WhisperSTTService
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (
    SpeechTimeoutUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

RATE = 16_000
FRAME = 320  # 20 ms at 16 kHz, what parlor's live callers send
VOICED = 0.01 * 32768  # parlor's trailing_silence threshold (-40 dBFS)
SILENCE = bytes(FRAME * 2)
DEFAULT_WHISPER = os.path.expanduser("~/.cache/parlor/extract/whisper-tiny.en-ct2")
DEFAULT_VOICE = "models/en_US-joe-medium.onnx"


class LocalWhisper(WhisperSTTService):
    """WhisperSTTService with faster-whisper's thread count (Pipecat does
    not pass one; its default is 4) and a local CTranslate2 directory."""

    def __init__(self, *, threads: int, **kwargs):
        self._threads = threads
        super().__init__(**kwargs)

    def _load(self):
        from faster_whisper import WhisperModel

        self._model = WhisperModel(
            self._settings.model, device="cpu", compute_type="int8", cpu_threads=self._threads
        )


def cascade(args, tools=None) -> SimpleNamespace:
    """Pipecat's usual cascade on parlor's models: Silero VAD (`stop_secs`),
    faster-whisper, the OpenAI LLM service on parlor's chat route at
    temperature 0 with `args.instructions`, Piper; and the context and its
    user/assistant aggregators. `args` has url, whisper, threads, voice,
    stop_secs, no_speech_prob and instructions."""
    vad = VADProcessor(vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=args.stop_secs)))
    # Pipecat drops every Whisper segment whose no-speech probability is
    # 0.4 or more; parlor keeps what Whisper says once its VAD has heard
    # speech. With Pipecat's 0.4, tiny.en dropped a clean espeak-ng "Are you
    # open on Sunday?" in 1 of 3 rounds (the same clip, cut a few ms
    # differently by the VAD), and the turn became Pipecat's empty-turn
    # recovery. `--no-speech-prob 1` (the default here) keeps every segment,
    # as parlor does.
    stt = LocalWhisper(
        threads=args.threads,
        settings=WhisperSTTService.Settings(model=args.whisper, no_speech_prob=args.no_speech_prob),
    )
    llm = OpenAILLMService(
        base_url=f"{args.url}/v1",
        api_key="x",
        settings=OpenAILLMService.Settings(
            model=served_model(args.url),
            temperature=0.0,
            system_instruction=Path(args.instructions).read_text().strip(),
        ),
    )
    voice = Path(args.voice)
    tts = PiperTTSService(settings=PiperTTSService.Settings(voice=voice.stem), download_dir=voice.parent)
    context = LLMContext([], tools=tools) if tools is not None else LLMContext([])
    # The turn ends when the VAD says so and Whisper has the transcript, as
    # in parlor: no extra wait (Pipecat's default stop strategy is its Smart
    # Turn model, which parlor has no counterpart for).
    pair = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            user_turn_strategies=UserTurnStrategies(
                stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0)]
            )
        ),
    )
    return SimpleNamespace(vad=vad, stt=stt, llm=llm, tts=tts, context=context, pair=pair)


def add_cascade_args(ap, *, instructions: str, stop_secs: float, turn_timeout: float):
    """The command-line options `cascade` and the live drive read; the
    defaults that differ between the peers are given."""
    ap.add_argument("--url", required=True, help="parlor serve's base URL (http://host:port)")
    ap.add_argument("--instructions", default=instructions)
    ap.add_argument("--whisper", default=DEFAULT_WHISPER)
    ap.add_argument("--voice", default=DEFAULT_VOICE)
    ap.add_argument("--stop-secs", type=float, default=stop_secs, help="Silero VAD stop_secs")
    ap.add_argument(
        "--no-speech-prob",
        type=float,
        default=1.0,
        help="drop Whisper segments at or above this no-speech probability (Pipecat's default: 0.4)",
    )
    ap.add_argument("--threads", type=int, default=2, help="faster-whisper CPU threads")
    ap.add_argument("--gap", type=float, default=0.5, help="silence after an answer (s)")
    ap.add_argument("--turn-timeout", type=float, default=turn_timeout)
    ap.add_argument("--verbose", action="store_true", help="keep Pipecat's DEBUG log")


def parse_args(ap):
    """Parse, and keep only Pipecat's warnings unless --verbose."""
    args = ap.parse_args()
    if not args.verbose:
        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    return args


def live_worker(pipeline, **kwargs) -> tuple[PipelineWorker, asyncio.Event]:
    """A worker that never idles out (a live call waits on its caller), and
    an event set once its pipeline has started."""
    worker = PipelineWorker(
        pipeline,
        enable_rtvi=False,
        cancel_on_idle_timeout=False,
        idle_timeout_secs=None,
        **kwargs,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker, _frame):
        started.set()

    return worker, started


async def run_worker(worker, drive):
    """Run `worker` while the coroutine `drive` feeds it."""
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), drive)


def read_wav(path: str) -> np.ndarray:
    """A 16 kHz mono 16-bit WAV's samples (what the task audio is)."""
    with wave.open(path, "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (RATE, 1, 2):
            raise ValueError(f"{path}: not 16 kHz mono 16-bit")
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def write_wav(path: str, pcm: bytes, rate: int):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


def voiced_end(samples: np.ndarray) -> int:
    """One past the last sample above the voiced threshold (0 if none)."""
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > VOICED)[0]
    return int(loud[-1]) + 1 if len(loud) else 0


def served_model(url: str) -> str:
    """The id parlor serves its chat model under (`/v1/models`)."""
    with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as r:
        return json.load(r)["data"][0]["id"]


class LiveSource:
    """Feeds a worker 20 ms frames on one clock for the whole call: frame k
    goes out at t0 + k * 20 ms, as a live microphone would deliver it."""

    def __init__(self, worker):
        self.worker = worker
        self.t0 = None
        self.k = 0

    async def send(self, chunk: bytes) -> float:
        """Queue one frame at its time; returns when it went out."""
        if self.t0 is None:
            self.t0 = time.perf_counter()
        self.k += 1
        delay = self.t0 + self.k * FRAME / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await self.worker.queue_frame(
            InputAudioRawFrame(audio=chunk, sample_rate=RATE, num_channels=1)
        )
        return time.perf_counter()

    async def silence(self, seconds: float):
        for _ in range(int(seconds * RATE / FRAME)):
            await self.send(SILENCE)

    async def speak(self, samples: np.ndarray) -> float | None:
        """Play `samples`; returns when their last voiced sample was spoken."""
        end = voiced_end(samples)
        padded = np.concatenate([samples, np.zeros((-len(samples)) % FRAME, dtype=np.int16)])
        spoken = None
        for start in range(0, len(padded), FRAME):
            sent = await self.send(padded[start : start + FRAME].tobytes())
            stop = start + FRAME
            if start < end <= stop:
                # The last voiced sample was spoken (stop - end) samples
                # before this frame was complete.
                spoken = sent - (stop - end) / RATE
        return spoken


def percentile(values, p):
    """Nearest rank, as parlor's `percentile`."""
    if not values:
        return None
    s = sorted(values)
    rank = max(1, min(len(s), -(-p * len(s) // 100)))
    return s[int(rank) - 1]
