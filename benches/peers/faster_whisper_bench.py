#!/usr/bin/env python3
"""Time faster-whisper on WAV clips; print the timings as JSON on stdout.

The peer for benches/stt.rs: the same tiny.en weights (the CTranslate2
files models/setup.sh extracts, before our ggml conversion), int8 on CPU,
greedy, no timestamps, each clip on its own, so the comparison is
decoder against decoder on the same audio.

Usage: faster_whisper_bench.py MODEL_DIR THREADS RUNS CLIP.wav...
"""

import json
import statistics
import sys
import time
import wave

import numpy as np
from faster_whisper import WhisperModel


def read_wav(path):
    # Decode here, outside the timed region: faster-whisper would otherwise
    # spend part of each call in PyAV, which the Rust side does not time.
    with wave.open(path, "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (16000, 1, 2):
            raise SystemExit(f"{path}: expected 16 kHz mono 16-bit")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def transcribe(model, audio):
    segments, _ = model.transcribe(
        audio,
        language="en",
        beam_size=1,
        best_of=1,
        without_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
    )
    # The result is a lazy generator: decoding happens while it is consumed.
    return " ".join(s.text.strip() for s in segments).strip()


def main(argv):
    if len(argv) < 5:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    model_dir, threads, runs, clips = argv[1], int(argv[2]), int(argv[3]), argv[4:]
    started = time.perf_counter()
    model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads)
    load_ms = (time.perf_counter() - started) * 1e3
    transcribe(model, read_wav(clips[0]))  # warm-up: first call allocates
    results = []
    for path in clips:
        audio = read_wav(path)
        times, text = [], ""
        for _ in range(runs):
            t0 = time.perf_counter()
            text = transcribe(model, audio)
            times.append((time.perf_counter() - t0) * 1e3)
        results.append(
            {
                "clip": path,
                "seconds": len(audio) / 16000,
                "ms": times,
                "median_ms": statistics.median(times),
                "text": text,
            }
        )
    json.dump({"load_ms": load_ms, "threads": threads, "compute_type": "int8", "clips": results}, sys.stdout)
    print()


if __name__ == "__main__":
    main(sys.argv)
