"""The official OpenAI Python client's realtime connection against parlor's
GET /v1/realtime.

Usage: openai_realtime_client.py MODE WS_BASE_URL WAV OUT_PCM

MODE `ask`: session.update, a malformed event, an event with a missing
field and an event type parlor ignores, then WAV (16-bit mono) streamed at
real-time pace as 24 kHz input_audio_buffer.append events (then silence,
as a live microphone would), until the first response.done.
MODE `cancel`: the same audio; at the first reply audio it sends
response.cancel, then conversation.item.truncate of the reply's item.
MODE `tool`: session.update declares one function tool,
`get_store_hours(city)`, which this client runs: when a response asks for
it, the client sends a `function_call_output` saying the store closes at
midnight, then `response.create`, and reads on until a response with audio
is done.

Every server event is validated against the package's own pydantic types
(`RealtimeServerEvent`), so a wrong field name or type is reported. Reply
audio (24 kHz 16-bit PCM) goes to OUT_PCM; one JSON object with what was
seen goes to stdout. Exits non-zero if the client raised.
"""

import asyncio
import base64
import json
import sys
import wave

import numpy as np
import openai
import pydantic
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent

RATE = 24_000

STORE_HOURS = {
    "type": "function",
    "name": "get_store_hours",
    "description": "Opening hours of the shop's store in a city. Use it for every question "
    "about when a store is open.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city of the store"}},
        "required": ["city"],
    },
}
STORE_FACT = "The Lisbon store opens at 8 in the morning and closes at midnight, every day."
FRAME = RATE // 50  # 20 ms


def load_24k(path: str) -> np.ndarray:
    with wave.open(path, "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1, "16-bit mono WAV"
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    if rate == RATE:
        return pcm
    t_out = np.arange(int(len(pcm) * RATE / rate)) / RATE
    return np.interp(t_out, np.arange(len(pcm)) / rate, pcm.astype(np.float64)).astype(np.int16)


async def main() -> None:
    mode, ws_base, wav_path, out_pcm = sys.argv[1:5]
    audio = load_24k(wav_path)
    client = AsyncOpenAI(api_key="unused", websocket_base_url=ws_base, max_retries=0)
    validator = pydantic.TypeAdapter(RealtimeServerEvent)
    seen: list[str] = []
    invalid: list[str] = []
    errors: list[dict] = []
    out: dict = {"openai_version": openai.__version__, "mode": mode}
    reply_audio = bytearray()

    async with client.realtime.connect(model="gpt-realtime", max_retries=0) as conn:

        async def next_event() -> dict:
            raw = await asyncio.wait_for(conn.recv_bytes(), timeout=180)
            data = json.loads(raw)
            try:
                validator.validate_python(data)
            except pydantic.ValidationError as e:
                invalid.append(f"{data.get('type')}: {e}")
            seen.append(data["type"])
            if data["type"] == "error":
                errors.append(data["error"])
            return data

        created = await next_event()
        out["created_session_type"] = created.get("session", {}).get("type")
        session = {
            "type": "realtime",
            "instructions": "Answer briefly.",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": RATE},
                    "turn_detection": {"type": "server_vad"},
                },
                "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": "marin"},
            },
        }
        if mode == "tool":
            session["tools"] = [STORE_HOURS]
            session["tool_choice"] = "auto"
        await conn.session.update(session=session)
        updated = await next_event()
        out["updated"] = updated["type"]
        out["updated_tools"] = [t.get("name") for t in updated.get("session", {}).get("tools") or []]

        if mode != "tool":
            # Bad input, answered with `error` events; the session goes on.
            await conn.send_raw("{not json")
            await conn.send_raw(
                json.dumps({"type": "input_audio_buffer.append", "event_id": "bad_1"})
            )
            # A type parlor does not act on: ignored, no answer.
            await conn.send({"type": "output_audio_buffer.clear"})
            out["bad_answers"] = [(await next_event()).get("error") for _ in range(2)]

        async def speak() -> None:
            for i in range(0, len(audio), FRAME):
                chunk = audio[i : i + FRAME].tobytes()
                await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
                await asyncio.sleep(0.02)
            silence = base64.b64encode(np.zeros(FRAME, dtype=np.int16).tobytes()).decode()
            while True:
                await conn.input_audio_buffer.append(audio=silence)
                await asyncio.sleep(0.02)

        speaker = asyncio.create_task(speak())
        try:
            cancelled_item = None
            while True:
                event = await next_event()
                kind = event["type"]
                if kind == "conversation.item.input_audio_transcription.completed":
                    out["transcript"] = event["transcript"]
                elif kind == "response.output_audio.delta":
                    reply_audio.extend(base64.b64decode(event["delta"]))
                    if mode == "cancel" and cancelled_item is None:
                        cancelled_item = event["item_id"]
                        await conn.response.cancel()
                elif kind == "response.output_audio_transcript.done":
                    out["reply_transcript"] = event["transcript"]
                elif kind == "response.function_call_arguments.done":
                    out.setdefault("calls", []).append(
                        {
                            "name": event["name"],
                            "call_id": event["call_id"],
                            "arguments": json.loads(event["arguments"]),
                        }
                    )
                elif kind == "response.done":
                    response = event["response"]
                    out["status"] = response["status"]
                    out["reason"] = (response.get("status_details") or {}).get("reason")
                    calls = [o for o in response["output"] if o["type"] == "function_call"]
                    if mode == "tool" and calls:
                        out["call_response_status"] = response["status"]
                        for call in calls:
                            await conn.conversation.item.create(
                                item={
                                    "type": "function_call_output",
                                    "call_id": call["call_id"],
                                    "output": STORE_FACT,
                                }
                            )
                            added = await next_event()
                            out.setdefault("output_answers", []).append(added["type"])
                        await conn.response.create()
                        continue
                    break
            if mode == "cancel" and cancelled_item is not None:
                await conn.conversation.item.truncate(
                    item_id=cancelled_item, content_index=0, audio_end_ms=0
                )
                while True:
                    event = await next_event()
                    if event["type"] in ("conversation.item.truncated", "error"):
                        out["truncate_answer"] = event["type"]
                        break
        finally:
            speaker.cancel()

    with open(out_pcm, "wb") as f:
        f.write(reply_audio)
    out.update(seen=seen, invalid=invalid, errors=errors)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
