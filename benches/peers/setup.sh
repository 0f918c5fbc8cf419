#!/usr/bin/env bash
# A Python venv with the peer frameworks the benches compare parlor with
# (Pipecat). Separate from models/setup.sh because only the benches need it
# and it is large (~0.5 GB). Idempotent.
set -euo pipefail
cache="${PARLOR_CACHE:-$HOME/.cache/parlor}"
venv="$cache/peers-venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "peers: creating $venv"
  python3 -m venv "$venv"
fi
# The `mcp` extra: pipecat_tasks.py gives Pipecat the pipeline's MCP servers.
if ! "$venv/bin/python" -c 'import pipecat, mcp' 2>/dev/null; then
  echo "peers: installing pipecat-ai[mcp] 1.14.0 (about 0.5 GB)"
  "$venv/bin/pip" install -q --disable-pip-version-check "pipecat-ai[mcp]==1.14.0"
fi
# The voice-to-voice peer (pipecat_v2v.py): Pipecat's Whisper service runs
# faster-whisper, its Piper service piper-tts (the `whisper` and `piper`
# extras, pinned). Silero's onnxruntime comes with pipecat-ai.
if ! "$venv/bin/python" -c 'import faster_whisper, piper' 2>/dev/null; then
  echo "peers: installing faster-whisper 1.2.1 and piper-tts 1.3.0"
  "$venv/bin/pip" install -q --disable-pip-version-check "faster-whisper==1.2.1" "piper-tts==1.3.0"
fi
echo "peers: ready ($venv/bin/python)"
