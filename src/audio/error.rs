//! What can go wrong with audio input, one variant per class of bad input.
//!
//! Messages are written for the person who sent the file: they say what is
//! wrong and what to do about it, and name sizes, limits and codecs.

use std::path::PathBuf;
use std::time::Duration;

/// The formats [`decode_file`](super::decode_file) and
/// [`decode_bytes`](super::decode_bytes) accept, for error messages.
pub const SUPPORTED_FORMATS: &str =
    "WAV (PCM 8/16/24/32-bit integer, 32/64-bit float, A-law, mu-law, IMA/MS ADPCM), FLAC, MP3, Ogg/Vorbis";

/// Lowest input sample rate accepted: below this there is no speech band to
/// transcribe, and such a rate in a header almost always means corruption.
pub const MIN_SAMPLE_RATE: u32 = 4_000;

/// Highest input sample rate accepted (the top of what audio hardware does).
pub const MAX_SAMPLE_RATE: u32 = 384_000;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// Raw 16-bit PCM that ends in half a sample.
    #[error("16-bit PCM comes in whole 2-byte samples; got {len} bytes")]
    OddPcmLength { len: usize },

    /// Zero bytes.
    #[error(
        "the audio input is empty (0 bytes); send a non-empty file in one of: {SUPPORTED_FORMATS}"
    )]
    Empty,

    /// Bigger than [`DecodeLimits::max_bytes`](super::DecodeLimits::max_bytes),
    /// found before reading the data.
    #[error(
        "the audio input is {size} bytes, over the limit of {limit} bytes; \
         send a shorter or more compressed file (e.g. FLAC or MP3), or raise the limit"
    )]
    TooLarge { size: u64, limit: u64 },

    /// Longer than [`DecodeLimits::max_duration`](super::DecodeLimits::max_duration).
    /// When the header did not say how long the audio is, decoding stops at
    /// the limit and `duration` is how far it got (`at_least` is then true).
    #[error(
        "the audio is {}{:.1} s long, over the limit of {:.1} s; \
         split it into shorter pieces or raise the limit",
        if *at_least { "at least " } else { "" },
        duration.as_secs_f64(),
        limit.as_secs_f64()
    )]
    TooLong {
        duration: Duration,
        limit: Duration,
        at_least: bool,
    },

    /// The bytes are not an audio container at all.
    #[error(
        "the input is not audio{}; send a file in one of: {SUPPORTED_FORMATS}",
        match looks_like { Some(kind) => format!(" (it looks like {kind})"), None => String::new() }
    )]
    NotAudio { looks_like: Option<&'static str> },

    /// A recognised container whose header ends early or does not parse.
    #[error(
        "the {format} header is truncated or corrupt ({detail}); \
         the file was probably cut off during upload or export, send it again"
    )]
    CorruptHeader {
        format: &'static str,
        detail: String,
    },

    /// Audio in a codec or container this build cannot decode.
    #[error(
        "unsupported audio codec or container: {codec}; convert it to one of: {SUPPORTED_FORMATS}"
    )]
    UnsupportedCodec { codec: String },

    /// A sample rate that no real recording has; usually a corrupt header.
    #[error(
        "unsupported sample rate {rate} Hz: it must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz; \
         the header is likely corrupt, or re-export the audio at 16 kHz or 48 kHz"
    )]
    BadSampleRate { rate: u32 },

    /// The container holds no track that carries audio.
    #[error("the file has no audio track; send a file with sound in one of: {SUPPORTED_FORMATS}")]
    NoAudioTrack,

    /// The header parsed but not a single packet of audio decoded. (When
    /// some audio decoded before the damage, the decoders return that audio
    /// with a warning instead.)
    #[error("the audio data is corrupt and nothing could be decoded ({detail}); re-export or re-send the file")]
    Corrupt { detail: String },

    /// Reading the input file failed.
    #[error("cannot read audio file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Writing a WAV file or buffer failed.
    #[error("cannot write WAV {target}: {source}")]
    Write {
        target: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A resampler could not be built or run. Not caused by input that
    /// passed the sample-rate check; report it as a bug.
    #[error("resampling from {from} Hz to {to} Hz failed: {detail} (this is a bug in parlor)")]
    Resample { from: u32, to: u32, detail: String },
}
