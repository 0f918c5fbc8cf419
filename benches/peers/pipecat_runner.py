"""Pipecat's frame cost on the same shape of work as benches/runner.rs.

Four pass-through processors between a source and a sink, 20 ms frames of
16 kHz 16-bit mono audio:
  - throughput: 1,000 frames queued at once; time per frame to the sink;
  - paced: one frame every 2 ms; time from queue_frame to the sink, p50/p90/p99.
Run twice: with Pipecat's optional processors off (RTVI, turn tracking,
idle detection) and with its defaults. Prints one JSON object per line.

Usage: python benches/peers/pipecat_runner.py   (needs `pip install pipecat-ai`)
"""

import asyncio
import json
import statistics
import sys
import time

from loguru import logger

logger.remove()  # Pipecat logs every start and stop at DEBUG to stderr.

from pipecat.frames.frames import EndFrame, InputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

FRAMES = 1_000
PACED = 1_000
AUDIO = bytes(640)  # 20 ms at 16 kHz, 16-bit mono


class Passthrough(FrameProcessor):
    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class Sink(FrameProcessor):
    """Counts audio frames reaching the end and wakes whoever waits."""

    def __init__(self):
        super().__init__()
        self.arrived = 0
        self.event = asyncio.Event()
        self.want = 0

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self.arrived += 1
            if self.arrived >= self.want:
                self.event.set()
        else:
            await self.push_frame(frame, direction)


def frame():
    return InputAudioRawFrame(audio=AUDIO, sample_rate=16_000, num_channels=1)


async def measure(defaults: bool) -> dict:
    sink = Sink()
    pipeline = Pipeline([Passthrough(), Passthrough(), Passthrough(), Passthrough(), sink])
    options = {} if defaults else {
        "enable_rtvi": False,
        "enable_turn_tracking": False,
        "cancel_on_idle_timeout": False,
        "idle_timeout_secs": None,
    }
    worker = PipelineWorker(pipeline, **options)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker, _frame):
        started.set()

    result = {}

    async def drive():
        await asyncio.wait_for(started.wait(), timeout=30)
        # Throughput: queue everything, wait for the last one.
        sink.want, sink.arrived = FRAMES, 0
        sink.event.clear()
        t0 = time.perf_counter()
        for _ in range(FRAMES):
            await worker.queue_frame(frame(), FrameDirection.DOWNSTREAM)
        await sink.event.wait()
        result["throughput_us_per_frame"] = (time.perf_counter() - t0) / FRAMES * 1e6
        # Paced: one at a time.
        samples = []
        for _ in range(PACED):
            await asyncio.sleep(0.002)
            sink.want, sink.arrived = 1, 0
            sink.event.clear()
            t0 = time.perf_counter()
            await worker.queue_frame(frame(), FrameDirection.DOWNSTREAM)
            await sink.event.wait()
            samples.append((time.perf_counter() - t0) * 1e6)
        samples.sort()
        q = lambda p: samples[int((len(samples) - 1) * p)]
        result.update(paced_p50_us=q(0.5), paced_p90_us=q(0.9), paced_p99_us=q(0.99),
                      paced_mean_us=statistics.fmean(samples))
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), drive())
    return result


def main():
    import pipecat
    for defaults in (False, True):
        r = asyncio.run(measure(defaults))
        r.update(peer="pipecat", version=getattr(pipecat, "__version__", "?"),
                 stages=4, config="defaults" if defaults else "optional processors off")
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    sys.exit(main())
