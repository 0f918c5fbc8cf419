"""The official OpenAI Python client against parlor's /v1/audio/transcriptions.

Usage: openai_transcription_client.py BASE_URL AUDIO_FILE

Prints one JSON object on stdout with what it saw (json, text, verbose_json,
a stream's events, and the error a bad language raises); tests/voice_turns.rs
checks it. Exits non-zero if the client raised something unexpected.
"""

import json
import sys

import openai
from openai import OpenAI


def main() -> None:
    base_url, path = sys.argv[1:3]
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=180)
    out = {"openai_version": openai.__version__}
    with open(path, "rb") as f:
        out["json"] = client.audio.transcriptions.create(model="whisper-1", file=f).text
    with open(path, "rb") as f:
        out["text"] = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="text"
        )
    with open(path, "rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", language="en"
        )
        out["verbose"] = {
            "text": verbose.text,
            "language": verbose.language,
            "duration": verbose.duration,
            "segments": [
                {"start": s.start, "end": s.end, "text": s.text} for s in verbose.segments or []
            ],
        }
    with open(path, "rb") as f:
        events = client.audio.transcriptions.create(model="whisper-1", file=f, stream=True)
        out["stream"] = [e.type for e in events]
    try:
        with open(path, "rb") as f:
            client.audio.transcriptions.create(model="whisper-1", file=f, language="fr")
        out["french"] = "accepted"
    except openai.BadRequestError as e:
        out["french"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
