//! Any supported file or upload to 16 kHz mono f32, with symphonia.
//!
//! Checks run cheapest first: byte size before reading anything, a sniff of
//! the first bytes (so a PNG or an MP4 gets a precise message rather than
//! "no reader found"), the header's sample rate and duration before decoding,
//! and the duration again while decoding, so an over-long file without a
//! duration in its header stops at the limit instead of decoding in full.
//!
//! Damage policy: a damaged or truncated *header* is an error. Damage in the
//! *data* (an upload cut off mid-stream, a corrupt packet) is not: whatever
//! decoded is returned with a warning in the log, because a transcript of
//! most of a recording beats none. Only when no audio at all decoded is it
//! [`AudioError::Corrupt`].

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use symphonia::core::audio::{AudioBuffer, AudioBufferRef, Signal};
use symphonia::core::codecs::{self, CodecType, DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{
    MediaSource, MediaSourceStream, MediaSourceStreamOptions, ReadOnlySource,
};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::resample::{self, StreamResampler};
use super::{AudioError, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE};
use crate::frame::{AudioChunk, PIPELINE_SAMPLE_RATE};

/// Bounds on what a decode may cost, checked before the work is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest input accepted, in bytes. The default, 25 MB, matches
    /// OpenAI's `/v1/audio/transcriptions` upload limit, so a client that
    /// works against OpenAI works against parlor.
    pub max_bytes: u64,
    /// Longest audio accepted. Ten minutes of 16 kHz f32 is 38 MB in
    /// memory and minutes of Whisper time on a small machine.
    pub max_duration: Duration,
    /// The rate to decode to: the pipeline's input rate (16 kHz, or 24 kHz
    /// for a realtime stage), so an upload is resampled once, here.
    pub rate: u32,
}

impl DecodeLimits {
    pub const DEFAULT_MAX_BYTES: u64 = 25 * 1024 * 1024;
    pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(10 * 60);
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_duration: Self::DEFAULT_MAX_DURATION,
            rate: PIPELINE_SAMPLE_RATE,
        }
    }
}

/// Decodes the audio file at `path` to mono at `limits.rate`
/// ([`PIPELINE_SAMPLE_RATE`] by default).
/// The extension, if any, is a hint; the content decides.
///
/// # Errors
/// [`AudioError::Read`] if the file cannot be opened or read, or any of the
/// bad-input errors described on [`AudioError`].
pub fn decode_file(
    path: impl AsRef<Path>,
    limits: &DecodeLimits,
) -> Result<AudioChunk, AudioError> {
    let path = path.as_ref();
    let read_err = |source| AudioError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    check_size(size, limits)?;

    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut file)
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;

    let ext = path.extension().and_then(|e| e.to_str());
    decode_source(Box::new(file), size, &head, ext, limits)
}

/// Decodes audio held in memory (an HTTP upload, say) to mono at
/// `limits.rate`. `hint` is a file extension (`"mp3"`,
/// `".wav"`) or a MIME type (`"audio/flac"`); the content decides.
///
/// Takes anything that owns its bytes (`Vec<u8>`, `bytes::Bytes`,
/// `&'static [u8]`), so an upload is decoded without a copy.
///
/// # Errors
/// The bad-input errors described on [`AudioError`].
pub fn decode_bytes<B>(
    bytes: B,
    hint: Option<&str>,
    limits: &DecodeLimits,
) -> Result<AudioChunk, AudioError>
where
    B: AsRef<[u8]> + Send + Sync + 'static,
{
    let data = bytes.as_ref();
    check_size(data.len() as u64, limits)?;
    let size = data.len() as u64;
    let head = data[..data.len().min(SNIFF_LEN)].to_vec();
    decode_source(Box::new(Cursor::new(bytes)), size, &head, hint, limits)
}

fn check_size(size: u64, limits: &DecodeLimits) -> Result<(), AudioError> {
    if size == 0 {
        return Err(AudioError::Empty);
    }
    if size > limits.max_bytes {
        return Err(AudioError::TooLarge {
            size,
            limit: limits.max_bytes,
        });
    }
    Ok(())
}

fn decode_source(
    source: Box<dyn MediaSource>,
    size: u64,
    head: &[u8],
    hint: Option<&str>,
    limits: &DecodeLimits,
) -> Result<AudioChunk, AudioError> {
    let sniffed = sniff(head);
    match sniffed {
        Sniff::NotAudio(kind) => return Err(AudioError::NotAudio { looks_like: kind }),
        Sniff::Unsupported(name) => {
            return Err(AudioError::UnsupportedCodec {
                codec: name.to_string(),
            })
        }
        Sniff::Supported(_) | Sniff::Unknown => {}
    }
    // symphonia's WAV reader panics on a 0 Hz header; check the rate first.
    if let Some(fmt) = peek_wav_fmt(head) {
        check_rate(fmt.rate)?;
    }
    // symphonia's Ogg reader reads the last page up front to learn the
    // duration, and gives up on the whole file when the end is cut off. Read
    // as a stream instead: the duration limit is then checked while decoding.
    let source: Box<dyn MediaSource> = if sniffed == Sniff::Supported("Ogg") {
        Box::new(ReadOnlySource::new(source))
    } else {
        source
    };
    // symphonia is young and parses hostile input; a panic inside it must
    // not take down a server thread, so it becomes a `Corrupt` error.
    match catch_unwind(AssertUnwindSafe(|| {
        decode_inner(source, size, sniffed, head, hint, limits)
    })) {
        Ok(result) => result,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "decoder panicked".into());
            tracing::error!(message = "Audio decoder panicked.", %detail);
            Err(AudioError::Corrupt {
                detail: format!("the decoder failed internally: {detail}"),
            })
        }
    }
}

fn decode_inner(
    source: Box<dyn MediaSource>,
    size: u64,
    sniffed: Sniff,
    head: &[u8],
    hint: Option<&str>,
    limits: &DecodeLimits,
) -> Result<AudioChunk, AudioError> {
    let mss = MediaSourceStream::new(source, MediaSourceStreamOptions::default());
    let mut sym_hint = Hint::new();
    if let Some(h) = hint {
        if h.contains('/') {
            sym_hint.mime_type(h);
        } else {
            sym_hint.with_extension(h.trim_start_matches('.'));
        }
    }
    let format_opts = FormatOptions {
        // Trims MP3 encoder delay and padding, so durations come out right.
        enable_gapless: true,
        ..Default::default()
    };
    let container = match sniffed {
        Sniff::Supported(name) => name,
        _ => "audio",
    };
    let probed = symphonia::default::get_probe()
        .format(&sym_hint, mss, &format_opts, &MetadataOptions::default())
        .map_err(|e| match (e, sniffed) {
            (SymError::Unsupported(_), Sniff::Unknown) => AudioError::NotAudio { looks_like: None },
            (SymError::Unsupported(msg), _) => AudioError::UnsupportedCodec {
                codec: match peek_wav_fmt(head) {
                    Some(fmt) => wav_format_name(fmt.tag),
                    None => format!("{container} variant ({msg})"),
                },
            },
            (e, _) => AudioError::CorruptHeader {
                format: container,
                detail: describe(&e),
            },
        })?;
    let mut format = probed.format;

    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or(AudioError::NoAudioTrack)?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    // A streamed WAV's writer could not know the length and left a
    // placeholder (or the upload was cut off): such a length cannot refuse
    // the file up front; the limit is then enforced while decoding.
    let trusted_frames = params
        .n_frames
        .filter(|&n| plausible_frames(n, size, head, &params));

    if let Some(rate) = params.sample_rate {
        check_rate(rate)?;
    }
    if let (Some(rate), Some(frames)) = (params.sample_rate, trusted_frames) {
        let duration = Duration::from_secs_f64(frames as f64 / rate as f64);
        if duration > limits.max_duration {
            return Err(AudioError::TooLong {
                duration,
                limit: limits.max_duration,
                at_least: false,
            });
        }
    }

    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| match e {
            SymError::Unsupported(_) => AudioError::UnsupportedCodec {
                codec: codec_name(params.codec),
            },
            e => AudioError::CorruptHeader {
                format: container,
                detail: describe(&e),
            },
        })?;

    let mut state = Decoding {
        rate: limits.rate,
        ..Decoding::default()
    };
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            // symphonia reports the normal end of a stream as an EOF error.
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => {
                state.damage("the stream changes format part-way (chained stream)".into());
                break;
            }
            Err(e) => {
                state.damage(describe(&e));
                break;
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(decoded) => {
                if decoded.frames() == 0 {
                    continue;
                }
                state.consecutive_errors = 0;
                if !state.push(decoded, limits)? {
                    break;
                }
            }
            // A corrupt packet: symphonia's guidance is to skip it. A run of
            // them means the rest is garbage; stop rather than spin.
            Err(e @ (SymError::DecodeError(_) | SymError::IoError(_))) => {
                state.damage(describe(&e));
                state.consecutive_errors += 1;
                if state.consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
                    break;
                }
            }
            Err(e) => {
                state.damage(describe(&e));
                break;
            }
        }
    }
    state.finish(params.n_frames, trusted_frames.is_some())
}

/// After this many undecodable packets in a row the rest is not audio.
const MAX_CONSECUTIVE_ERRORS: u32 = 32;

#[derive(Default)]
struct Decoding {
    /// The rate decoded to.
    rate: u32,
    resampler: Option<StreamResampler>,
    /// Reused across packets to avoid an allocation per packet.
    buf: Option<AudioBuffer<f32>>,
    mono: Vec<f32>,
    out: Vec<f32>,
    frames_in: u64,
    errors: u32,
    consecutive_errors: u32,
    last_error: Option<String>,
}

impl Decoding {
    fn damage(&mut self, detail: String) {
        self.errors += 1;
        self.last_error = Some(detail);
    }

    /// Downmixes and resamples one decoded packet. `Ok(false)` means stop:
    /// the sample rate changed part-way, which only broken or chained files do.
    fn push(
        &mut self,
        decoded: AudioBufferRef<'_>,
        limits: &DecodeLimits,
    ) -> Result<bool, AudioError> {
        let spec = *decoded.spec();
        let resampler = match &mut self.resampler {
            Some(r) if r.input_rate() == spec.rate => r,
            Some(r) => {
                let (from, to) = (r.input_rate(), spec.rate);
                self.damage(format!(
                    "the sample rate changes part-way from {from} Hz to {to} Hz"
                ));
                return Ok(false);
            }
            None => {
                check_rate(spec.rate)?;
                self.resampler
                    .insert(resample::batch(spec.rate, limits.rate)?)
            }
        };

        let frames = decoded.frames();
        self.frames_in += frames as u64;
        let max_frames = limits.max_duration.as_secs_f64() * spec.rate as f64;
        if self.frames_in as f64 > max_frames {
            return Err(AudioError::TooLong {
                duration: Duration::from_secs_f64(self.frames_in as f64 / spec.rate as f64),
                limit: limits.max_duration,
                at_least: true,
            });
        }

        let channels = spec.channels.count();
        if channels == 0 {
            self.damage("a packet has no channels".into());
            return Ok(true);
        }
        let buf = match &mut self.buf {
            Some(b) if b.capacity() >= frames && b.spec() == &spec => b,
            slot => slot.insert(AudioBuffer::new(
                decoded.capacity().max(frames) as u64,
                spec,
            )),
        };
        decoded.convert(buf);

        self.mono.clear();
        self.mono.extend_from_slice(&buf.chan(0)[..frames]);
        if channels > 1 {
            for ch in 1..channels {
                for (m, s) in self.mono.iter_mut().zip(&buf.chan(ch)[..frames]) {
                    *m += s;
                }
            }
            let scale = 1.0 / channels as f32;
            self.mono.iter_mut().for_each(|m| *m *= scale);
        }
        // AudioChunk promises [-1, 1]. Float files may hold overshoot, or
        // NaN and infinities when broken; NaN becomes silence.
        for m in &mut self.mono {
            *m = if m.is_nan() { 0.0 } else { m.clamp(-1.0, 1.0) };
        }
        resampler.process(&self.mono, &mut self.out)?;
        Ok(true)
    }

    /// `header_frames` is the length the header claims; `header_trusted`
    /// says whether the input is big enough to hold it.
    fn finish(
        mut self,
        header_frames: Option<u64>,
        header_trusted: bool,
    ) -> Result<AudioChunk, AudioError> {
        let Some(resampler) = &mut self.resampler else {
            // Nothing decoded. A header that promised audio means the data is
            // missing or unreadable; one that promised none is a valid, empty file.
            return match (self.last_error, header_frames) {
                (Some(detail), _) => Err(AudioError::Corrupt { detail }),
                (None, Some(n)) if n > 0 => Err(AudioError::Corrupt {
                    detail: format!(
                        "the header promises {n} sample frames but the data is missing"
                    ),
                }),
                (None, _) => Ok(AudioChunk::new(self.rate, Vec::new())),
            };
        };
        resampler.finish(&mut self.out)?;
        let rate = resampler.input_rate();
        let decoded_s = self.frames_in as f64 / rate as f64;
        if let Some(detail) = &self.last_error {
            tracing::warn!(
                message = "Audio is damaged; returning what decoded.",
                decoded_s,
                errors = self.errors,
                last_error = %detail,
            );
        } else if let Some(expected) =
            header_frames.filter(|&n| header_trusted && n > self.frames_in)
        {
            tracing::warn!(
                message =
                    "Audio is shorter than its header says (truncated?); returning what decoded.",
                decoded_s,
                header_s = expected as f64 / rate as f64,
            );
        }
        Ok(AudioChunk::new(self.rate, self.out))
    }
}

/// Whether a WAV of `size` bytes can hold `frames` frames. Other formats
/// always pass: compressed data can hold any number of frames.
fn plausible_frames(frames: u64, size: u64, head: &[u8], params: &codecs::CodecParameters) -> bool {
    let Some(fmt) = peek_wav_fmt(head) else {
        return true;
    };
    let per_block = params.frames_per_block.unwrap_or(1).max(1);
    let bytes_needed = frames.div_ceil(per_block) as u128 * fmt.block_align as u128;
    bytes_needed <= size as u128
}

fn check_rate(rate: u32) -> Result<(), AudioError> {
    if (MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
        Ok(())
    } else {
        Err(AudioError::BadSampleRate { rate })
    }
}

/// symphonia's messages are terse ("wav: malformed fmt chunk"); an EOF in a
/// header says more as "ends early".
fn describe(e: &SymError) -> String {
    match e {
        SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the data ends early".into()
        }
        SymError::IoError(io) => format!("read error: {io}"),
        SymError::DecodeError(msg) | SymError::Unsupported(msg) => (*msg).into(),
        SymError::SeekError(_) => "seek error".into(),
        SymError::LimitError(msg) => format!("limit exceeded: {msg}"),
        SymError::ResetRequired => "stream reset required".into(),
    }
}

/// Names codecs that symphonia recognises in a container but this build
/// does not decode, for the error message.
fn codec_name(codec: CodecType) -> String {
    let known = [
        (codecs::CODEC_TYPE_AAC, "AAC"),
        (codecs::CODEC_TYPE_OPUS, "Opus"),
        (codecs::CODEC_TYPE_ALAC, "ALAC"),
        (codecs::CODEC_TYPE_SPEEX, "Speex"),
        (codecs::CODEC_TYPE_MP1, "MPEG-1 Layer I"),
        (codecs::CODEC_TYPE_MP2, "MPEG-1 Layer II"),
        (codecs::CODEC_TYPE_WAVPACK, "WavPack"),
        (codecs::CODEC_TYPE_WMA, "WMA"),
        (codecs::CODEC_TYPE_DCA, "DTS"),
        (codecs::CODEC_TYPE_EAC3, "E-AC-3"),
        (codecs::CODEC_TYPE_ATRAC3, "ATRAC3"),
    ];
    match known.iter().find(|(c, _)| *c == codec) {
        Some((_, name)) => (*name).into(),
        None => match symphonia::default::get_codecs().get_codec(codec) {
            Some(d) => d.long_name.into(),
            None => format!("unknown codec (symphonia id {codec})"),
        },
    }
}

/// How many leading bytes the sniffer looks at.
const SNIFF_LEN: usize = 64;

/// What the first bytes say the input is, before symphonia is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniff {
    /// A container symphonia reads here (named for header-error messages).
    Supported(&'static str),
    /// Audio, but in a container or codec this build does not decode.
    Unsupported(&'static str),
    /// Recognisably not audio; the name when known.
    NotAudio(Option<&'static str>),
    /// No idea: let symphonia's probe decide (raw MP3 frames land here).
    Unknown,
}

fn sniff(head: &[u8]) -> Sniff {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"RIFF") && at(8, b"WAVE") {
        return Sniff::Supported("WAV");
    }
    if at(0, b"fLaC") {
        return Sniff::Supported("FLAC");
    }
    if at(0, b"OggS") {
        // The first page's packet names the codec (offset 28 with one segment).
        return if at(28, b"OpusHead") {
            Sniff::Unsupported("Opus in Ogg")
        } else if at(28, b"Speex   ") {
            Sniff::Unsupported("Speex in Ogg")
        } else {
            Sniff::Supported("Ogg")
        };
    }
    if at(0, b"ID3") {
        return Sniff::Supported("MP3");
    }
    let unsupported: &[(usize, &[u8], &str)] = &[
        (4, b"ftyp", "MP4/M4A (AAC or ALAC)"),
        (0, b"\x1a\x45\xdf\xa3", "WebM/Matroska"),
        (0, b"FORM", "AIFF"),
        (0, b"caff", "Core Audio (CAF)"),
        (0, b"#!AMR", "AMR"),
        (0, b".snd", "Sun/NeXT AU"),
        (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "WMA/ASF"),
        (0, b"RF64", "RF64 (64-bit WAV)"),
        (0, b"riff\x2e\x91\xcf\x11", "Wave64"),
        (0, b"MThd", "MIDI"),
        (0, b"wvpk", "WavPack"),
    ];
    for &(offset, magic, name) in unsupported {
        if at(offset, magic) {
            return Sniff::Unsupported(name);
        }
    }
    // ADTS AAC: 12-bit sync with layer bits 00 (MP3 frames have layer != 00).
    if head.len() >= 2 && head[0] == 0xff && head[1] & 0xf6 == 0xf0 {
        return Sniff::Unsupported("AAC (ADTS)");
    }
    let not_audio: &[(&[u8], &str)] = &[
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"GIF8", "a GIF image"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"\x1f\x8b", "a gzip archive"),
        (b"\x7fELF", "a program"),
        (b"MZ", "a program"),
    ];
    for &(magic, name) in not_audio {
        if at(0, magic) {
            return Sniff::NotAudio(Some(name));
        }
    }
    if looks_like_text(head) {
        return Sniff::NotAudio(Some("text"));
    }
    Sniff::Unknown
}

/// The fields of a WAV `fmt ` chunk that decide what we can say before
/// symphonia reads it.
struct WavFmt {
    tag: u16,
    rate: u32,
    block_align: u16,
}

/// Reads the `fmt ` chunk when it comes first, as every writer puts it.
fn peek_wav_fmt(head: &[u8]) -> Option<WavFmt> {
    if head.get(0..4)? != b"RIFF" || head.get(8..12)? != b"WAVE" || head.get(12..16)? != b"fmt " {
        return None;
    }
    Some(WavFmt {
        tag: u16::from_le_bytes(head.get(20..22)?.try_into().ok()?),
        rate: u32::from_le_bytes(head.get(24..28)?.try_into().ok()?),
        block_align: u16::from_le_bytes(head.get(32..34)?.try_into().ok()?),
    })
}

fn wav_format_name(tag: u16) -> String {
    let name = match tag {
        0x0055 => "MP3 in WAV",
        0x0031 => "GSM 6.10 in WAV",
        0x0022 => "TrueSpeech in WAV",
        0x0040 | 0x0064 => "G.721 ADPCM in WAV",
        0x0045 => "G.726 ADPCM in WAV",
        0x0161..=0x0163 => "WMA in WAV",
        0x00ff | 0x1600..=0x1610 => "AAC in WAV",
        0xfffe => "WAV (extensible) with an unsupported sub-format",
        _ => return format!("WAV with format tag 0x{tag:04x}"),
    };
    format!("{name} (format tag 0x{tag:04x})")
}

fn looks_like_text(head: &[u8]) -> bool {
    // A cut at SNIFF_LEN may split a UTF-8 character; ignore a partial tail.
    let valid = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or("")
        }
        Err(_) => return false,
    };
    !valid.is_empty()
        && valid
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
}
