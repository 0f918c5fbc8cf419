"""Split a Piper voice at its decoder's input, so parlor can stream a sentence.

    python split_piper.py VOICE.onnx OUT_DIR

writes OUT_DIR/VOICE.encoder.onnx (phoneme ids, lengths, scales -> latent
frames [1, C, T]) and OUT_DIR/VOICE.decoder.onnx (latent frames -> audio,
256 samples a frame for the medium voices).

Why: a Piper (VITS) model is one call per sentence, and the caller hears
nothing until the whole sentence is made. About 60% of that time is the
HiFi-GAN decoder, which is convolutional: given 10 frames of context on
each side, a window of the latent decodes to exactly the samples the whole
sentence would have there (checked: max difference 0.0 at 10 frames). So
parlor runs the encoder once, then decodes the first ~0.3 s and plays it
while it decodes the rest (src/stages/tts/piper_stream.rs).

The cut is the input of the decoder's first node (`/dec/conv_pre/Conv`,
the name every Piper export gives it). A voice with several speakers also
feeds the decoder a speaker embedding; that is not handled, and the
script refuses such a voice (parlor then runs the whole model).
"""

import sys
from pathlib import Path

import onnx
import onnx.utils

DECODER_FIRST_NODE = "/dec/conv_pre/Conv"


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    voice, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    model = onnx.load(str(voice))
    graph = model.graph
    inputs = [i.name for i in graph.input]
    if "sid" in inputs:
        sys.exit(f"{voice}: a voice with several speakers (input 'sid') is not split")
    weights = {w.name for w in graph.initializer}
    first = next((n for n in graph.node if n.name == DECODER_FIRST_NODE), None)
    if first is None:
        sys.exit(f"{voice}: no node {DECODER_FIRST_NODE}; is this a Piper voice?")
    latent = [i for i in first.input if i not in weights]
    if len(latent) != 1:
        sys.exit(f"{voice}: {DECODER_FIRST_NODE} has inputs {latent}, expected one")
    outputs = [o.name for o in graph.output]
    stem = voice.name.removesuffix(".onnx")
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = out_dir / f"{stem}.encoder.onnx"
    decoder = out_dir / f"{stem}.decoder.onnx"
    onnx.utils.extract_model(str(voice), str(encoder), inputs, latent)
    onnx.utils.extract_model(str(voice), str(decoder), latent, outputs)
    print(f"{encoder.name}: {inputs} -> {latent}; {decoder.name}: {latent} -> {outputs}")


if __name__ == "__main__":
    main()
