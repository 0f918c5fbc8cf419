//! Backend-independent turn finding: speech probabilities in, turns out.
//!
//! The [`Segmenter`] takes 16 kHz audio in pieces of any size, cuts it into
//! the detector's frames, and runs a small state machine over the frames'
//! speech probabilities:
//!
//! ```text
//!  idle ──p ≥ threshold──► candidate ──speech ≥ min_speech──► speaking
//!   ▲                          │                                  │
//!   └──── silence ≥ end_of_turn (discarded) ◄─┘   silence ≥ end_of_turn,
//!   └──────────────────────────────────────────── or audio ≥ max_turn ──┘
//! ```
//!
//! "Silence" uses hysteresis, as Silero's reference code does: a frame
//! starts speech at `threshold` but only counts as silence below
//! `threshold - 0.15`, so a voice that dips for a moment does not end a turn.
//! Speech start is announced only once `min_speech` of it has been heard, so
//! a click or a cough never produces a `SpeechStarted` (which a live call
//! treats as barge-in).
//!
//! Everything is counted in samples, so the same audio gives the same turns
//! whatever the size of the pieces it arrives in.

use std::collections::VecDeque;
use std::time::Duration;

use super::{SpeechDetector, VadError};
use crate::frame::PIPELINE_SAMPLE_RATE;
use crate::spec::VadSpec;

/// How far below the start threshold a frame must fall to count as silence.
const HYSTERESIS: f32 = 0.15;

/// Inside a turn, quiet frames overrule the detector only once they have
/// run this long (64 ms at 16 kHz): a stop consonant's closure or a gap
/// between words can be one quiet frame, and must not read as a pause
/// (with a 25 ms `early_stt` one frame would start a transcription).
const QUIET_RUN_MIN: usize = 1024;

/// The segmenter's knobs, in samples at 16 kHz.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmenterConfig {
    /// A frame at or above this probability is speech.
    pub threshold: f32,
    /// Inside a turn, a frame below this probability is silence.
    pub silence_threshold: f32,
    /// Silence that ends a turn.
    pub end_of_turn: usize,
    /// Speech shorter than this is not a turn.
    pub min_speech: usize,
    /// Audio kept before the detected start and after the last speech.
    pub pre_roll: usize,
    /// Utterance audio (pre-roll included) is never longer than this.
    pub max_turn: usize,
    /// While parlor's reply is playing, speech this long (at least) is
    /// needed before a turn is announced: the echo guard.
    pub barge_in_min: usize,
    /// Silence inside an announced turn after which the speech so far is
    /// offered for an early transcription ([`SegmentEvent::Paused`]); 0: never.
    pub early_stt: usize,
    /// A frame whose mean square is below this is quiet: between turns it
    /// is silence and the detector is not asked; inside a turn a run of
    /// quiet frames is silence whatever the detector says (see
    /// `VadSpec::quiet_dbfs`). 0: the detector decides every frame.
    pub quiet_power: f32,
}

impl SegmenterConfig {
    pub fn from_spec(spec: &VadSpec) -> Self {
        let ms = |ms: u32| ms as usize * PIPELINE_SAMPLE_RATE as usize / 1000;
        Self {
            threshold: spec.threshold,
            silence_threshold: (spec.threshold - HYSTERESIS).max(0.01),
            end_of_turn: ms(spec.end_of_turn_ms),
            min_speech: ms(spec.min_speech_ms),
            pre_roll: ms(spec.pre_roll_ms),
            max_turn: ms(spec.max_turn_s.saturating_mul(1000)),
            barge_in_min: ms(spec.barge_in_min_ms),
            early_stt: ms(spec.early_stt_ms),
            // dBFS of an RMS level, as a mean square: 10^(dB/10). -100
            // means "off": 0, which not even digital silence is below.
            quiet_power: if spec.quiet_dbfs <= -100.0 {
                0.0
            } else {
                10f32.powf(spec.quiet_dbfs / 10.0)
            },
        }
    }
}

/// What the segmenter found in the audio it was given.
#[derive(Debug)]
pub enum SegmentEvent {
    /// Speech began at this stream position (the detected onset; the
    /// utterance's audio starts up to a pre-roll earlier). Sent once
    /// `min_speech` of speech has been heard.
    Started { at: Duration },
    /// The turn in progress has been silent for `early_stt`: its speech so
    /// far, padded with what silence there is (up to a pre-roll). Sent once
    /// per pause; if the turn then ends with no more speech, its `Ended`
    /// segment has the same speech, so a transcript of this one stands.
    Paused(SpeechSegment),
    /// The turn that last started is over.
    Ended(SpeechSegment),
}

/// One turn's speech.
#[derive(Debug)]
pub struct SpeechSegment {
    /// Pre-roll, speech, and up to a pre-roll of what followed it.
    pub audio: Vec<f32>,
    /// Stream position of `audio[0]`.
    pub audio_start: Duration,
    /// Stream position of the detected onset (as in [`SegmentEvent::Started`]).
    pub speech_start: Duration,
    /// From the onset to the end of the last speech frame.
    pub speech: Duration,
    /// Ended because the utterance reached `max_turn`, not by silence.
    pub forced: bool,
}

impl SpeechSegment {
    /// Stream position where the speech ended.
    pub fn speech_end(&self) -> Duration {
        self.speech_start + self.speech
    }
}

/// The turn in progress.
struct Turn {
    audio: Vec<f32>,
    /// Stream position (samples) of `audio[0]`.
    audio_start: u64,
    speech_start: u64,
    /// End of the last frame that was speech.
    speech_end: u64,
    /// Length of the silence run that is going on now.
    silence: usize,
    announced: bool,
    /// This silence run has been offered as a [`SegmentEvent::Paused`].
    paused: bool,
    /// Length of the run of quiet frames going on now.
    quiet_run: usize,
}

/// Turns a stream of audio into turns; see the module docs.
pub struct Segmenter {
    config: SegmenterConfig,
    detector: Box<dyn SpeechDetector>,
    frame_len: usize,
    /// Samples waiting for a whole detector frame.
    pending: Vec<f32>,
    /// Stream position (samples) just after the last frame given to the detector.
    position: u64,
    /// The most recent audio while idle, for the next turn's pre-roll.
    history: VecDeque<f32>,
    turn: Option<Turn>,
    /// parlor's own voice is playing to the caller (see `barge_in_min`).
    playing: bool,
}

impl Segmenter {
    pub fn new(config: SegmenterConfig, detector: Box<dyn SpeechDetector>) -> Self {
        let frame_len = detector.frame_len();
        Self {
            history: VecDeque::with_capacity(config.pre_roll),
            pending: Vec::with_capacity(frame_len),
            config,
            detector,
            frame_len,
            position: 0,
            turn: None,
            playing: false,
        }
    }

    /// Say whether parlor's reply is playing to the caller now. While it
    /// is, a turn needs `barge_in_min` of speech to be announced, so an
    /// echo of parlor's voice does not interrupt it.
    pub fn set_playing(&mut self, playing: bool) {
        self.playing = playing;
    }

    /// Speech needed before a turn is announced, now.
    fn min_speech_now(&self) -> usize {
        if self.playing {
            self.config.min_speech.max(self.config.barge_in_min)
        } else {
            self.config.min_speech
        }
    }

    pub fn config(&self) -> &SegmenterConfig {
        &self.config
    }

    /// The detector's frame size in samples.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Whether a turn (announced or not) is in progress.
    pub fn in_turn(&self) -> bool {
        self.turn.is_some()
    }

    /// Feed the next piece of audio (16 kHz mono, any length), appending what
    /// it completes to `events`. Does not allocate except when a turn starts
    /// or its audio buffer grows.
    ///
    /// # Errors
    /// The detector's, when it fails on a frame.
    pub fn push(
        &mut self,
        samples: &[f32],
        events: &mut Vec<SegmentEvent>,
    ) -> Result<(), VadError> {
        let mut rest = samples;
        if !self.pending.is_empty() {
            let take = (self.frame_len - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() < self.frame_len {
                return Ok(());
            }
            let frame = std::mem::take(&mut self.pending);
            let result = self.process(&frame, events);
            self.pending = frame;
            self.pending.clear();
            result?;
        }
        while rest.len() >= self.frame_len {
            let (frame, tail) = rest.split_at(self.frame_len);
            self.process(frame, events)?;
            rest = tail;
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    /// The input has ended: end the turn in progress if it has enough
    /// speech, discard it otherwise, and get ready for a new stream.
    pub fn finish(&mut self, events: &mut Vec<SegmentEvent>) {
        if let Some(mut turn) = self.turn.take() {
            // The partial frame never reached the detector; it belongs to
            // the turn's tail all the same.
            turn.audio.extend_from_slice(&self.pending);
            if turn.announced
                || turn.speech_end - turn.speech_start >= self.config.min_speech as u64
            {
                if !turn.announced {
                    events.push(SegmentEvent::Started {
                        at: samples_to_duration(turn.speech_start),
                    });
                }
                events.push(SegmentEvent::Ended(self.close(turn, false)));
            }
        }
        self.reset();
    }

    /// Whether `frame` is below the quiet floor: a few hundred multiply-adds
    /// against a detector's tens of microseconds.
    fn is_quiet(&self, frame: &[f32]) -> bool {
        let power = frame.iter().map(|s| s * s).sum::<f32>() / frame.len() as f32;
        power < self.config.quiet_power
    }

    /// Forget all state (including the detector's) for a new stream.
    pub fn reset(&mut self) {
        self.detector.reset();
        self.pending.clear();
        self.history.clear();
        self.position = 0;
        self.turn = None;
    }

    fn process(&mut self, frame: &[f32], events: &mut Vec<SegmentEvent>) -> Result<(), VadError> {
        // Between turns a frame below the floor is silence and the
        // detector is not asked (that is the saving). Inside a turn it is
        // asked, and a run of quiet frames overrules it below. The stream's
        // first frame always goes to the detector: some settle their state
        // on it (earshot primes on it).
        let quiet = self.position > 0 && self.is_quiet(frame);
        let probability = if quiet && self.turn.is_none() {
            0.0
        } else {
            self.detector.speech_probability(frame)?
        };
        let frame_start = self.position;
        self.position += frame.len() as u64;
        let cfg = &self.config;

        let Some(turn) = self.turn.as_mut() else {
            if probability >= cfg.threshold {
                let mut audio = Vec::with_capacity(
                    (self.history.len()
                        + cfg.min_speech
                        + cfg.end_of_turn
                        + 2 * PIPELINE_SAMPLE_RATE as usize)
                        .min(cfg.max_turn),
                );
                audio.extend(self.history.drain(..));
                let audio_start = frame_start - audio.len() as u64;
                audio.extend_from_slice(frame);
                self.turn = Some(Turn {
                    audio,
                    audio_start,
                    speech_start: frame_start,
                    speech_end: self.position,
                    silence: 0,
                    announced: false,
                    paused: false,
                    quiet_run: 0,
                });
                self.after_frame(events);
            } else {
                remember(&mut self.history, cfg.pre_roll, frame);
            }
            return Ok(());
        };

        turn.audio.extend_from_slice(frame);
        // A detector's probability falls off over the 50–150 ms after a
        // voice stops; a line quiet enough for the floor shows the end at
        // once. So past `QUIET_RUN_MIN` the run is silence, dated from its
        // first frame: the end of turn counts from where the speech ended.
        turn.quiet_run = if quiet {
            turn.quiet_run + frame.len()
        } else {
            0
        };
        let overruled = turn.quiet_run >= QUIET_RUN_MIN;
        let probability = if overruled { 0.0 } else { probability };
        if overruled && turn.silence < turn.quiet_run - frame.len() {
            // The detector still heard speech in the run's first frames.
            turn.silence = turn.quiet_run - frame.len();
            turn.speech_end = (self.position - turn.quiet_run as u64).max(turn.speech_start);
        }
        if probability >= cfg.threshold {
            turn.silence = 0;
            turn.paused = false;
            turn.speech_end = self.position;
        } else if probability < cfg.silence_threshold || turn.silence > 0 {
            // Between the two thresholds a frame continues whatever was
            // going on: speech stays speech, a pause stays a pause.
            turn.silence += frame.len();
        } else {
            turn.speech_end = self.position;
        }
        self.after_frame(events);
        Ok(())
    }

    /// Announce, end or discard the turn in progress after a frame.
    fn after_frame(&mut self, events: &mut Vec<SegmentEvent>) {
        let min_speech = self.min_speech_now() as u64;
        let cfg = &self.config;
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if !turn.announced && turn.speech_end - turn.speech_start >= min_speech {
            turn.announced = true;
            events.push(SegmentEvent::Started {
                at: samples_to_duration(turn.speech_start),
            });
        }
        if turn.silence >= cfg.end_of_turn {
            let turn = self.turn.take().expect("checked above");
            if turn.announced {
                let segment = self.close(turn, false);
                events.push(SegmentEvent::Ended(segment));
            } else {
                // Too short to be a turn: a click, a cough. Its tail is
                // still the most recent audio, i.e. the next pre-roll.
                remember(&mut self.history, self.config.pre_roll, &turn.audio);
            }
        } else if turn.audio.len() + self.frame_len > cfg.max_turn {
            // One more frame would not fit in the window the STT reads.
            let mut turn = self.turn.take().expect("checked above");
            if !turn.announced {
                turn.announced = true;
                events.push(SegmentEvent::Started {
                    at: samples_to_duration(turn.speech_start),
                });
            }
            let segment = self.close(turn, true);
            events.push(SegmentEvent::Ended(segment));
        } else if turn.announced
            && !turn.paused
            && cfg.early_stt > 0
            && turn.silence >= cfg.early_stt
        {
            turn.paused = true;
            // The same cut `close` makes, of the audio there is so far.
            let keep = (turn.speech_end + cfg.pre_roll as u64 - turn.audio_start) as usize;
            events.push(SegmentEvent::Paused(SpeechSegment {
                audio: turn.audio[..keep.min(turn.audio.len())].to_vec(),
                audio_start: samples_to_duration(turn.audio_start),
                speech_start: samples_to_duration(turn.speech_start),
                speech: samples_to_duration(turn.speech_end - turn.speech_start),
                forced: false,
            }));
        }
    }

    /// Trim a finished turn's audio to its speech plus padding.
    fn close(&mut self, mut turn: Turn, forced: bool) -> SpeechSegment {
        if !forced {
            let keep = (turn.speech_end + self.config.pre_roll as u64 - turn.audio_start) as usize;
            // What follows the speech is the next turn's pre-roll.
            remember(&mut self.history, self.config.pre_roll, &turn.audio);
            turn.audio.truncate(keep.min(turn.audio.len()));
        } else {
            // The speech goes on; a pre-roll would repeat the end of this
            // utterance at the start of the next.
            self.history.clear();
        }
        SpeechSegment {
            audio: turn.audio,
            audio_start: samples_to_duration(turn.audio_start),
            speech_start: samples_to_duration(turn.speech_start),
            speech: samples_to_duration(turn.speech_end - turn.speech_start),
            forced,
        }
    }
}

/// Keep the last `cap` samples of what `history` held followed by `samples`.
fn remember(history: &mut VecDeque<f32>, cap: usize, samples: &[f32]) {
    if cap == 0 {
        return;
    }
    let samples = &samples[samples.len().saturating_sub(cap)..];
    let overflow = (history.len() + samples.len()).saturating_sub(cap);
    history.drain(..overflow);
    history.extend(samples);
}

/// A stream position in samples at 16 kHz as a duration.
pub fn samples_to_duration(samples: u64) -> Duration {
    Duration::from_nanos(samples * 1_000_000_000 / PIPELINE_SAMPLE_RATE as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Says "speech" for frames whose first sample is above 0.5: lets the
    /// state machine be tested with exact, synthetic probabilities.
    struct Level;

    impl SpeechDetector for Level {
        fn frame_len(&self) -> usize {
            160
        }
        fn speech_probability(&mut self, frame: &[f32]) -> Result<f32, VadError> {
            Ok(frame[0])
        }
        fn reset(&mut self) {}
    }

    fn config() -> SegmenterConfig {
        SegmenterConfig {
            threshold: 0.5,
            silence_threshold: 0.35,
            end_of_turn: 3_200,
            min_speech: 1_600,
            pre_roll: 800,
            max_turn: 160_000,
            barge_in_min: 6_400,
            early_stt: 0,
            quiet_power: 0.0,
        }
    }

    /// `spans` of (level, samples) back to back.
    fn signal(spans: &[(f32, usize)]) -> Vec<f32> {
        spans
            .iter()
            .flat_map(|&(l, n)| std::iter::repeat_n(l, n))
            .collect()
    }

    fn run(config: SegmenterConfig, audio: &[f32], piece: usize) -> Vec<SegmentEvent> {
        let mut s = Segmenter::new(config, Box::new(Level));
        let mut events = Vec::new();
        for chunk in audio.chunks(piece) {
            s.push(chunk, &mut events).unwrap();
        }
        s.finish(&mut events);
        events
    }

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    /// [`Level`], counting the frames it is asked about.
    struct Counted(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl SpeechDetector for Counted {
        fn frame_len(&self) -> usize {
            160
        }
        fn speech_probability(&mut self, frame: &[f32]) -> Result<f32, VadError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(frame[0])
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn between_turns_frames_below_the_quiet_floor_skip_the_detector() {
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let config = SegmenterConfig {
            quiet_power: 1e-6, // -60 dBFS
            ..config()
        };
        let mut s = Segmenter::new(config, Box::new(Counted(asked.clone())));
        // Digital silence, a second of "speech", a hiss at -80 dBFS that
        // ends the turn (200 ms), then a second more of it.
        let audio = signal(&[(0.0, 16_000), (0.9, 16_000), (1e-4, 32_000)]);
        let mut events = Vec::new();
        s.push(&audio, &mut events).unwrap();
        s.finish(&mut events);
        assert_eq!(events.len(), 2, "{events:?}");
        let SegmentEvent::Ended(segment) = &events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(ms(segment.speech), 1000);
        // The stream's first frame, the loud ones, and the quiet ones
        // inside the turn until its end of turn (3200 samples): none of
        // the quiet ones before or after it.
        assert_eq!(
            asked.load(std::sync::atomic::Ordering::SeqCst),
            1 + 100 + 20
        );
    }

    /// A detector that hears speech in everything: the worst case of the
    /// fall-off after a voice stops.
    struct AlwaysSpeech;

    impl SpeechDetector for AlwaysSpeech {
        fn frame_len(&self) -> usize {
            160
        }
        fn speech_probability(&mut self, _frame: &[f32]) -> Result<f32, VadError> {
            Ok(0.9)
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn inside_a_turn_a_quiet_run_overrules_the_detector() {
        let run = |quiet_power, audio: &[f32]| {
            let config = SegmenterConfig {
                quiet_power,
                early_stt: 400, // 25 ms
                ..config()
            };
            let mut s = Segmenter::new(config, Box::new(AlwaysSpeech));
            let mut events = Vec::new();
            s.push(audio, &mut events).unwrap();
            events
        };
        let pauses = |events: &[SegmentEvent]| {
            events
                .iter()
                .filter(|e| matches!(e, SegmentEvent::Paused(_)))
                .count()
        };
        // A second of speech, then half a second of hiss at -80 dBFS that
        // the detector still calls speech.
        let audio = signal(&[(0.9, 16_000), (1e-4, 8_000)]);
        // With the floor the turn ends 200 ms after the speech, before the
        // input does; the speech is the second, not the hiss.
        let events = run(1e-6, &audio);
        let Some(SegmentEvent::Ended(ended)) = events.last() else {
            panic!("{events:?}")
        };
        assert_eq!(ms(ended.speech), 1000);
        assert_eq!(pauses(&events), 1);
        // Without it the detector's word stands and the turn goes on.
        let events = run(0.0, &audio);
        assert!(
            !events.iter().any(|e| matches!(e, SegmentEvent::Ended(_))),
            "{events:?}"
        );
        // A quiet gap shorter than the run (48 ms: a stop consonant) is
        // not a pause; one longer (100 ms) is.
        for (gap, expected) in [(768, 0), (1_600, 1)] {
            let audio = signal(&[(0.9, 16_000), (1e-4, gap), (0.9, 16_000)]);
            assert_eq!(pauses(&run(1e-6, &audio)), expected, "gap of {gap} samples");
        }
    }

    #[test]
    fn one_turn_with_pre_roll_and_padding() {
        let audio = signal(&[(0.0, 16_000), (0.9, 16_000), (0.0, 16_000)]);
        let events = run(config(), &audio, 333);
        assert_eq!(events.len(), 2, "{events:?}");
        let SegmentEvent::Started { at } = &events[0] else {
            panic!()
        };
        assert_eq!(ms(*at), 1000);
        let SegmentEvent::Ended(seg) = &events[1] else {
            panic!()
        };
        assert_eq!(ms(seg.speech_start), 1000);
        assert_eq!(ms(seg.speech), 1000);
        assert_eq!(ms(seg.audio_start), 950);
        assert_eq!(seg.audio.len(), 800 + 16_000 + 800);
        assert!(!seg.forced);
    }

    #[test]
    fn a_pause_offers_the_speech_so_far_once_and_it_matches_the_end() {
        let config = SegmenterConfig {
            early_stt: 1_600,
            quiet_power: 0.0,
            ..config()
        };
        // Speech, a 150 ms pause (a paused event, then more speech), speech,
        // silence to the end of the turn.
        let audio = signal(&[
            (0.0, 16_000),
            (0.9, 16_000),
            (0.0, 2_400),
            (0.9, 8_000),
            (0.0, 16_000),
        ]);
        let events = run(config, &audio, 333);
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| match e {
                SegmentEvent::Started { .. } => "started",
                SegmentEvent::Paused(_) => "paused",
                SegmentEvent::Ended(_) => "ended",
            })
            .collect();
        assert_eq!(kinds, ["started", "paused", "paused", "ended"]);
        let (SegmentEvent::Paused(first), SegmentEvent::Paused(last), SegmentEvent::Ended(end)) =
            (&events[1], &events[2], &events[3])
        else {
            panic!()
        };
        // The first pause has only the first stretch of speech.
        assert_eq!(ms(first.speech), 1000);
        assert_eq!(first.audio.len(), 800 + 16_000 + 800);
        // The last pause is exactly the turn as it ended: same speech, same
        // audio (silence past a pre-roll is cut either way).
        assert_eq!(last.speech, end.speech);
        assert_eq!(last.speech_end(), end.speech_end());
        assert_eq!(last.audio, end.audio);
    }

    #[test]
    fn a_pause_shorter_than_the_padding_is_padded_with_what_there_is() {
        let config = SegmenterConfig {
            early_stt: 480,
            quiet_power: 0.0,
            ..config()
        };
        let audio = signal(&[(0.0, 16_000), (0.9, 16_000), (0.0, 16_000)]);
        let events = run(config, &audio, 160);
        let SegmentEvent::Paused(paused) = &events[1] else {
            panic!("{events:?}")
        };
        // 30 ms of silence heard, of the 50 ms pre-roll the end keeps.
        assert_eq!(paused.audio.len(), 800 + 16_000 + 480);
        let SegmentEvent::Ended(end) = &events[2] else {
            panic!("{events:?}")
        };
        assert_eq!(paused.speech_end(), end.speech_end());
    }

    #[test]
    fn short_blip_is_not_a_turn() {
        let audio = signal(&[(0.0, 8_000), (0.9, 800), (0.0, 16_000)]);
        assert!(run(config(), &audio, 320).is_empty());
    }

    #[test]
    fn while_playing_only_speech_past_the_echo_guard_is_a_turn() {
        // 300 ms: a turn when parlor is quiet, an echo while it speaks.
        let short = signal(&[(0.0, 1_600), (0.9, 4_800), (0.0, 8_000)]);
        let mut s = Segmenter::new(config(), Box::new(Level));
        let mut events = Vec::new();
        s.set_playing(true);
        s.push(&short, &mut events).unwrap();
        assert!(events.is_empty(), "{events:?}");
        s.set_playing(false);
        s.push(&short, &mut events).unwrap();
        assert_eq!(events.len(), 2, "{events:?}");

        // 500 ms while playing: the caller barging in, announced once the
        // guard's 400 ms have been heard.
        let long = signal(&[(0.0, 1_600), (0.9, 8_000), (0.0, 8_000)]);
        let mut s = Segmenter::new(config(), Box::new(Level));
        let mut events = Vec::new();
        s.set_playing(true);
        s.push(&long[..1_600 + 6_400 - 512], &mut events).unwrap();
        assert!(events.is_empty(), "{events:?}");
        s.push(&long[1_600 + 6_400 - 512..], &mut events).unwrap();
        assert!(
            matches!(events[0], SegmentEvent::Started { .. }),
            "{events:?}"
        );
    }

    #[test]
    fn dips_between_thresholds_do_not_end_speech() {
        let audio = signal(&[
            (0.0, 1600),
            (0.9, 8_000),
            (0.4, 8_000),
            (0.9, 8_000),
            (0.0, 8_000),
        ]);
        let events = run(config(), &audio, 160);
        assert_eq!(events.len(), 2);
        let SegmentEvent::Ended(seg) = &events[1] else {
            panic!()
        };
        assert_eq!(ms(seg.speech), 1500);
    }

    #[test]
    fn max_turn_forces_an_end() {
        let mut cfg = config();
        cfg.max_turn = 32_000;
        let audio = signal(&[(0.0, 1600), (0.9, 80_000)]);
        let events = run(cfg, &audio, 1000);
        let ends: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                SegmentEvent::Ended(s) => Some(s),
                _ => None,
            })
            .collect();
        assert!(ends.len() >= 2);
        assert!(ends[0].forced);
        assert!(ends.iter().all(|s| s.audio.len() <= 32_000));
    }

    #[test]
    fn piece_size_does_not_matter() {
        let audio = signal(&[
            (0.0, 5_000),
            (0.9, 7_000),
            (0.0, 4_000),
            (0.9, 20_000),
            (0.0, 2_000),
        ]);
        let describe = |events: Vec<SegmentEvent>| -> Vec<(u128, u128, usize)> {
            events
                .into_iter()
                .filter_map(|e| match e {
                    SegmentEvent::Ended(s) => {
                        Some((ms(s.speech_start), ms(s.speech), s.audio.len()))
                    }
                    _ => None,
                })
                .collect()
        };
        let whole = describe(run(config(), &audio, audio.len()));
        assert_eq!(whole.len(), 2);
        for piece in [1, 7, 160, 320, 999] {
            assert_eq!(
                describe(run(config(), &audio, piece)),
                whole,
                "piece {piece}"
            );
        }
    }
}
