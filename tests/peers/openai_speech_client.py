"""The official OpenAI Python client against parlor's /v1/audio/speech.

Usage: openai_speech_client.py BASE_URL OUT_WAV TEXT

Streams the speech to OUT_WAV as the client's docs show, then prints one
JSON object on stdout with what it saw; tests/tts.rs decodes the file.
Exits non-zero if the client raised.
"""

import json
import sys

import openai
from openai import OpenAI


def main() -> None:
    base_url, out_wav, text = sys.argv[1:4]
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts",
        voice="alloy",
        input=text,
        response_format="wav",
    ) as response:
        content_type = response.headers.get("content-type")
        response.stream_to_file(out_wav)
    out = {"openai_version": openai.__version__, "content_type": content_type}

    # An unsupported format must raise the client's BadRequestError.
    try:
        client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="mp3")
        out["mp3"] = "accepted"
    except openai.BadRequestError as e:
        out["mp3"] = {"status": e.status_code, "message": e.message}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
