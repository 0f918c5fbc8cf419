//! The local Whisper stage against the real tiny.en model and real speech:
//! LibriVox and command clips from pocketsphinx's test data and espeak-ng
//! sentences, all fetched or made by `bash models/setup.sh`.
//!
//! Every test drives the stage through a real `StageIo` on tokio channels,
//! the way the runner does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parlor::frame::{AudioChunk, Frame, TurnId, TurnMetrics, Utterance};
use parlor::stages::stt::whisper_local::{audio_ctx_for, auto_audio_ctx};
use parlor::stages::stt::{
    run_stt, SttError, Transcriber, WhisperEngine, WhisperLocal, WhisperSettings,
};
use parlor::stages::{Stage, StageContext, StageError, StageIo};
use parlor::turns::Turns;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SETUP: &str = "run `bash models/setup.sh` from the project root first";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn model_path() -> PathBuf {
    let path = root().join("models/ggml-tiny.en.bin");
    assert!(path.is_file(), "{} is missing: {SETUP}", path.display());
    path
}

/// The stage with the default (automatic) encoder window.
fn load_stage() -> WhisperLocal {
    load_stage_with(None)
}

fn load_stage_with(audio_ctx: Option<u32>) -> WhisperLocal {
    let settings = WhisperSettings {
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        language: "en".into(),
        audio_ctx,
    };
    let engine = WhisperEngine::load(&model_path(), settings).expect("load the whisper model");
    WhisperLocal::new(engine)
}

/// One clip of the corpus: 16 kHz mono speech and what was said.
struct Clip {
    name: String,
    samples: Vec<f32>,
    reference: String,
}

fn read_wav(path: &Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e} ({SETUP})", path.display()));
    let spec = reader.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (16_000, 1, 16),
        "{}: the corpus is 16 kHz mono 16-bit",
        path.display()
    );
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("wav sample")) / 32_768.0)
        .collect()
}

/// Every `*.wav` with a `*.txt` beside it under models/speech/{dirs}.
fn corpus(dirs: &[&str]) -> Vec<Clip> {
    let mut clips = Vec::new();
    for dir in dirs {
        let dir = root().join("models/speech").join(dir);
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}: {SETUP}", dir.display()));
        let mut wavs: Vec<PathBuf> = entries
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "wav"))
            .collect();
        wavs.sort();
        assert!(!wavs.is_empty(), "no clips in {}: {SETUP}", dir.display());
        for wav in wavs {
            let txt = wav.with_extension("txt");
            let reference = std::fs::read_to_string(&txt)
                .unwrap_or_else(|e| panic!("{}: {e}: {SETUP}", txt.display()));
            clips.push(Clip {
                name: format!(
                    "{}/{}",
                    dir.file_name().unwrap().to_string_lossy(),
                    wav.file_stem().unwrap().to_string_lossy()
                ),
                samples: read_wav(&wav),
                reference: reference.trim().to_string(),
            });
        }
    }
    clips
}

// ---------------------------------------------------------------------------
// Word error rate
// ---------------------------------------------------------------------------

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

/// Numbers as words, the way the references spell them. Whisper writes
/// "10 of clubs" and "order 1042"; the references say "ten of clubs" and
/// "one zero four two". One- and two-digit numbers are read as cardinals,
/// longer ones digit by digit (order numbers, codes), which is how every
/// reference in the corpus reads them.
fn number_words(digits: &str) -> Vec<String> {
    match digits.parse::<usize>() {
        Ok(n) if digits.len() <= 2 && n < 20 => vec![ONES[n].to_string()],
        Ok(n) if digits.len() <= 2 => {
            let mut words = vec![TENS[n / 10].to_string()];
            if n % 10 != 0 {
                words.push(ONES[n % 10].to_string());
            }
            words
        }
        _ => digits
            .chars()
            .map(|c| ONES[c.to_digit(10).unwrap_or(0) as usize].to_string())
            .collect(),
    }
}

/// Lower case, punctuation and hyphens to spaces (so "cold-hearted" and
/// "cold hearted" agree), apostrophes kept inside words, numbers as words.
fn normalise(text: &str) -> Vec<String> {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned
        .split_whitespace()
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .flat_map(|w| {
            if w.chars().all(|c| c.is_ascii_digit()) {
                number_words(w)
            } else {
                vec![w.to_string()]
            }
        })
        .collect()
}

/// Word-level Levenshtein distance over the reference's length.
fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let r = normalise(reference);
    let h = normalise(hypothesis);
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    let mut previous: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut current = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let substitution = previous[j] + usize::from(rw != hw);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[h.len()] as f64 / r.len() as f64
}

#[test]
fn wer_counts_substitutions_insertions_and_deletions() {
    assert_eq!(
        word_error_rate("go forward ten meters", "Go forward, 10 meters."),
        0.0
    );
    assert_eq!(
        word_error_rate("order one zero four two", "order 1042"),
        0.0
    );
    assert_eq!(word_error_rate("a b c d", "a x c d"), 0.25);
    assert_eq!(word_error_rate("a b c d", "a b c d e"), 0.25);
    assert_eq!(word_error_rate("a b c d", "a c d"), 0.25);
    assert_eq!(word_error_rate("cold hearted", "cold-hearted"), 0.0);
    assert_eq!(word_error_rate("forty two", "42"), 0.0);
}

// ---------------------------------------------------------------------------
// Running the stage
// ---------------------------------------------------------------------------

struct Harness {
    input: mpsc::Sender<Frame>,
    output: mpsc::Receiver<Frame>,
    turns: Arc<Turns>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), parlor::stages::StageError>>,
}

fn start(stage: impl Stage + 'static, barge_in: bool) -> Harness {
    let (input, stage_in) = mpsc::channel(8);
    let (stage_out, output) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let turns = Arc::new(Turns::new(barge_in, shutdown.clone()));
    let cx = StageContext {
        shutdown: shutdown.clone(),
        turns: turns.clone(),
    };
    let io = StageIo::new(stage.name(), stage_in, stage_out);
    let task = tokio::spawn(Box::new(stage).run(io, cx));
    Harness {
        input,
        output,
        turns,
        shutdown,
        task,
    }
}

fn speech_ended(turn: TurnId, samples: Vec<f32>) -> Frame {
    Frame::SpeechEnded(utterance(turn, samples))
}

/// The speech of `turn`, all of it speech (so it ends where the audio does).
fn utterance(turn: TurnId, samples: Vec<f32>) -> Utterance {
    Utterance {
        turn,
        speech_end: Duration::from_secs_f64(samples.len() as f64 / 16_000.0),
        audio: Arc::new(AudioChunk::new(16_000, samples)),
        start: Duration::ZERO,
        ended_at: Instant::now(),
    }
}

/// The real Whisper stage, counting the transcriptions it starts.
struct Counting {
    whisper: WhisperLocal,
    started: Arc<AtomicUsize>,
}

#[async_trait]
impl Transcriber for Counting {
    async fn transcribe(
        &self,
        utterance: Utterance,
        cancel: CancellationToken,
    ) -> Result<Option<String>, SttError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.whisper.transcribe(utterance, cancel).await
    }
}

#[async_trait]
impl Stage for Counting {
    fn name(&self) -> &'static str {
        "stt"
    }

    async fn run(self: Box<Self>, io: StageIo, cx: StageContext) -> Result<(), StageError> {
        run_stt(&*self, io, cx).await
    }
}

fn counting_stage() -> (Counting, Arc<AtomicUsize>) {
    let started = Arc::new(AtomicUsize::new(0));
    let stage = Counting {
        whisper: load_stage(),
        started: started.clone(),
    };
    (stage, started)
}

/// Every frame out of the stage until its input closes, transcripts with
/// their text, as `kind:turn[:text]` (`partial` for a transcript that is
/// not final).
async fn drain(output: &mut mpsc::Receiver<Frame>) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(frame) = output.recv().await {
        seen.push(label(&frame));
    }
    seen
}

fn label(frame: &Frame) -> String {
    let turn = frame.turn().map_or(0, |t| t.0);
    match frame {
        Frame::Transcript {
            text,
            is_final: true,
            ..
        } => format!("transcript:{turn}:{text}"),
        Frame::Transcript { text, .. } => format!("partial:{turn}:{text}"),
        other => format!("{}:{turn}", other.kind()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_with_no_more_speech_is_transcribed_once_from_the_pause() {
    let clip = sample_clip();
    let (stage, started) = counting_stage();
    let mut h = start(stage, false);
    let turn = h.turns.begin();
    let speech = utterance(turn, clip.samples.clone());
    h.input
        .send(Frame::SpeechPaused(speech.clone()))
        .await
        .unwrap();
    // The end-of-turn wait, during which the transcription finishes: its
    // words go on at once, marked as not final (the planner may start on
    // them).
    let early = tokio::time::timeout(Duration::from_secs(20), h.output.recv())
        .await
        .expect("the pause's words before the turn ends")
        .expect("the stage is running");
    let early = label(&early);
    let text = early
        .strip_prefix("partial:1:")
        .unwrap_or_else(|| panic!("a transcript that is not final, got {early}"));
    assert!(word_error_rate(&clip.reference, text) < 0.5, "{text:?}");
    h.input.send(Frame::SpeechEnded(speech)).await.unwrap();
    h.input.send(end_of_turn(turn, 1.0)).await.unwrap();
    drop(h.input);
    let seen = drain(&mut h.output).await;
    h.task.await.unwrap().expect("clean stop");
    // No speech after the pause: the final transcript is the same words.
    assert_eq!(
        seen,
        [
            "speech_ended:1".to_string(),
            format!("transcript:1:{text}"),
            "end_of_turn:1".to_string()
        ]
    );
    assert_eq!(
        started.load(Ordering::SeqCst),
        1,
        "the pause's job was used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_after_a_pause_is_transcribed_again_in_full() {
    let clip = sample_clip();
    let (stage, started) = counting_stage();
    let mut h = start(stage, false);
    let turn = h.turns.begin();
    // The caller paused halfway, then went on: the early job had only the
    // first half; the turn's transcript must be of all of it.
    let half = clip.samples[..clip.samples.len() / 2].to_vec();
    h.input
        .send(Frame::SpeechPaused(utterance(turn, half)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.input
        .send(speech_ended(turn, clip.samples.clone()))
        .await
        .unwrap();
    // A pause in a cancelled turn starts nothing and gives nothing.
    let cancelled = h.turns.begin();
    h.turns.cancel(cancelled);
    h.input
        .send(Frame::SpeechPaused(utterance(
            cancelled,
            clip.samples.clone(),
        )))
        .await
        .unwrap();
    h.input
        .send(speech_ended(cancelled, clip.samples.clone()))
        .await
        .unwrap();
    drop(h.input);
    let mut seen = drain(&mut h.output).await;
    h.task.await.unwrap().expect("clean stop");
    // (Had the half's job finished within the 50 ms, its words would have
    // gone on as not final: they are not what this test is about.)
    seen.retain(|s| !s.starts_with("partial:1:"));
    assert_eq!(
        seen.len(),
        2,
        "only the live turn's end and words: {seen:?}"
    );
    assert_eq!(seen[0], "speech_ended:1");
    let text = seen[1].strip_prefix("transcript:1:").expect("a transcript");
    assert!(
        word_error_rate(&clip.reference, text) < 0.5,
        "{text:?} is not all of {:?}",
        clip.reference
    );
    assert_eq!(started.load(Ordering::SeqCst), 2, "the half and the whole");
}

fn end_of_turn(turn: TurnId, seconds: f64) -> Frame {
    Frame::EndOfTurn(TurnMetrics::new(
        turn,
        Duration::from_secs_f64(seconds),
        Instant::now(),
    ))
}

/// "go forward ten meters": a short, known-good utterance for the control tests.
fn sample_clip() -> &'static Clip {
    static CLIP: OnceLock<Clip> = OnceLock::new();
    CLIP.get_or_init(|| {
        corpus(&["commands"])
            .into_iter()
            .next()
            .expect("commands/goforward.wav")
    })
}

#[test]
fn the_automatic_window_covers_the_turn_up_to_the_full_window() {
    let s = |seconds: f64| (seconds * 16_000.0) as usize;
    // Short turns: the 1024-frame floor (20.48 s).
    assert_eq!(auto_audio_ctx(s(0.5)), 1024);
    assert_eq!(auto_audio_ctx(s(7.1)), 1024);
    // Long ones: the speech (50 frames a second) plus 256, in steps of 64.
    assert_eq!(auto_audio_ctx(s(24.0)), 1472);
    assert_eq!(auto_audio_ctx(s(29.0)), 1500);
    assert_eq!(auto_audio_ctx(s(60.0)), 1500);
    // A fixed window is kept, but never cuts a turn off.
    assert_eq!(audio_ctx_for(Some(1500), s(2.0)), 1500);
    assert_eq!(audio_ctx_for(Some(512), s(2.0)), 512);
    assert_eq!(audio_ctx_for(Some(512), s(15.0)), 750);
    assert_eq!(audio_ctx_for(None, s(2.0)), 1024);
}

// Measured here (tiny.en f16, greedy, 2 threads) over these 19 clips:
// mean WER 0.043 with the full window. The misses are real: "ill disposed"
// heard as "old-sposed" and "four queen of clubs" as "4. Queen of Clothes"
// (0.25 each), "clubs" as "close" (0.11), "the opening" as "me opening"
// (0.11); everything else is exact. The default, automatic window (1024
// frames on these short clips) also hears "ill-disposed" as "old-sposed"
// in librivox/0890: 0.051. MODELS.md saw 0.071 on 11 similar clips. 0.10
// leaves room for another CPU's rounding to flip a word or three, and
// still fails when the conversion, the mel filters, the decoding settings
// or the window go wrong: those push WER past 0.5.
const WER_BUDGET: f64 = 0.10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcribes_the_corpus_within_the_word_error_budget() {
    let mean = corpus_wer(None).await;
    assert!(mean < WER_BUDGET, "mean WER {mean:.3} ≥ {WER_BUDGET}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_window_stays_within_the_word_error_budget() {
    let mean = corpus_wer(Some(1500)).await;
    assert!(mean < WER_BUDGET, "mean WER {mean:.3} ≥ {WER_BUDGET}");
}

/// Every clip through the stage with this encoder window: the mean WER.
async fn corpus_wer(audio_ctx: Option<u32>) -> f64 {
    let clips = corpus(&["librivox", "cards", "commands", "espeak"]);
    let mut h = start(load_stage_with(audio_ctx), false);

    // All turns in, then read: the stage takes them in order, one at a time.
    let feeder = {
        let input = h.input.clone();
        let turns = h.turns.clone();
        let audio: Vec<Vec<f32>> = clips.iter().map(|c| c.samples.clone()).collect();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for samples in audio {
                let turn = turns.begin();
                let seconds = samples.len() as f64 / 16_000.0;
                input.send(speech_ended(turn, samples)).await.unwrap();
                input.send(end_of_turn(turn, seconds)).await.unwrap();
                ids.push(turn);
            }
            ids
        })
    };
    drop(h.input);

    let mut transcripts: Vec<(TurnId, String)> = Vec::new();
    let mut ends: Vec<TurnMetrics> = Vec::new();
    while let Some(frame) = h.output.recv().await {
        match frame {
            Frame::Transcript {
                turn,
                text,
                is_final,
            } => {
                assert!(is_final);
                assert!(
                    !ends.iter().any(|m| m.turn == turn),
                    "turn {turn}: transcript after its EndOfTurn"
                );
                transcripts.push((turn, text));
            }
            Frame::EndOfTurn(m) => ends.push(m),
            // Passed on for the call's edge.
            Frame::SpeechEnded(_) => {}
            other => panic!("unexpected {} frame", other.kind()),
        }
    }
    let ids = feeder.await.unwrap();
    h.task
        .await
        .unwrap()
        .expect("stage ends cleanly when its input closes");
    assert_eq!(ends.len(), clips.len(), "every EndOfTurn is forwarded");

    let mut total = 0.0;
    let mut report = String::from("\n");
    for (clip, turn) in clips.iter().zip(&ids) {
        let text = transcripts
            .iter()
            .find(|(t, _)| t == turn)
            .map(|(_, text)| text.as_str())
            .unwrap_or("");
        let wer = word_error_rate(&clip.reference, text);
        let timing = ends
            .iter()
            .find(|m| m.turn == *turn)
            .and_then(|m| m.stage("stt"))
            .expect("EndOfTurn carries the stt stage's timing");
        let ms = timing
            .time_to_first_output
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        total += wer;
        report += &format!(
            "{:<50} {:>4.1} s  {ms:>6.0} ms  WER {wer:.3}  {text:?}\n",
            clip.name,
            clip.samples.len() as f64 / 16_000.0
        );
    }
    let mean = total / clips.len() as f64;
    eprintln!(
        "{report}audio_ctx {audio_ctx:?}: mean WER over {} clips: {mean:.3}",
        clips.len()
    );
    mean
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_cancelled_turns_and_passes_other_frames_through() {
    let clip = sample_clip();
    let mut h = start(load_stage(), false);

    let stale = h.turns.begin();
    let live = h.turns.begin();
    h.turns.cancel(stale); // as barge-in or a hang-up would
    assert!(!h.turns.is_live(stale));

    let audio = Frame::Audio(AudioChunk::new(16_000, vec![0.0; 320]));
    h.input
        .send(speech_ended(stale, clip.samples.clone()))
        .await
        .unwrap();
    h.input.send(end_of_turn(stale, 1.0)).await.unwrap();
    h.input.send(audio).await.unwrap();
    h.input
        .send(Frame::SpeechStarted {
            turn: live,
            at: Duration::from_secs(3),
        })
        .await
        .unwrap();
    h.input
        .send(speech_ended(live, clip.samples.clone()))
        .await
        .unwrap();
    h.input.send(end_of_turn(live, 1.0)).await.unwrap();
    // Silence is a turn with no words: no transcript, but its EndOfTurn.
    let quiet = h.turns.begin();
    h.input
        .send(speech_ended(quiet, vec![0.0; 16_000]))
        .await
        .unwrap();
    h.input.send(end_of_turn(quiet, 1.0)).await.unwrap();
    drop(h.input);

    let mut seen = Vec::new();
    while let Some(frame) = h.output.recv().await {
        let label = format!("{}:{}", frame.kind(), frame.turn().map_or(0, |t| t.0));
        if let Frame::Transcript { text, .. } = &frame {
            assert!(word_error_rate(&clip.reference, text) < 0.5, "{text:?}");
        }
        seen.push(label);
    }
    h.task.await.unwrap().expect("clean stop");
    assert_eq!(
        seen,
        [
            "end_of_turn:1",
            "audio:0",
            "speech_started:2",
            "speech_ended:2",
            "transcript:2",
            "end_of_turn:2",
            "speech_ended:3",
            "end_of_turn:3",
        ],
        "the stale turn's speech is dropped, everything else passes in order"
    );
}

/// Counts whisper.cpp's "failed to encode" / "failed to decode" lines at
/// error level, for the whole test binary (whisper.cpp logs from the
/// blocking pool's threads). Only those: other tests here run alongside and
/// log real errors (a model file that is not one).
fn whisper_errors() -> &'static AtomicUsize {
    static ERRORS: OnceLock<&'static AtomicUsize> = OnceLock::new();
    ERRORS.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        struct Count(&'static AtomicUsize);
        /// The event's message, as text.
        #[derive(Default)]
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                if *event.metadata().level() != tracing::Level::ERROR {
                    return;
                }
                let mut message = Message::default();
                event.record(&mut message);
                if message.0.contains("failed to encode") || message.0.contains("failed to decode")
                {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let errors: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Count(errors)))
            .expect("the only subscriber of this test binary");
        errors
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_turn_mid_transcription_drops_it_and_the_next_turn_still_works() {
    let errors = whisper_errors();
    let clip = sample_clip();
    let mut h = start(load_stage(), true);

    let first = h.turns.begin();
    h.input
        .send(speech_ended(first, clip.samples.clone()))
        .await
        .unwrap();
    h.input.send(end_of_turn(first, 1.0)).await.unwrap();
    // The encoder alone takes hundreds of milliseconds: cancel inside it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = h.turns.begin(); // barge-in cancels `first`
    h.input
        .send(speech_ended(second, clip.samples.clone()))
        .await
        .unwrap();
    h.input.send(end_of_turn(second, 1.0)).await.unwrap();
    drop(h.input);

    let mut seen = Vec::new();
    while let Some(frame) = h.output.recv().await {
        if let Frame::Transcript { turn, text, .. } = &frame {
            assert_eq!(*turn, second, "no transcript for the cancelled turn");
            assert!(word_error_rate(&clip.reference, text) < 0.5, "{text:?}");
        }
        seen.push(format!(
            "{}:{}",
            frame.kind(),
            frame.turn().map_or(0, |t| t.0)
        ));
    }
    h.task.await.unwrap().expect("clean stop");
    assert_eq!(
        seen,
        [
            "speech_ended:1",
            "end_of_turn:1",
            "speech_ended:2",
            "transcript:2",
            "end_of_turn:2"
        ]
    );
    // whisper.cpp reports the stop as "failed to encode" at error level;
    // a cancelled turn is no error, so it must not be logged as one.
    assert_eq!(
        errors.load(Ordering::SeqCst),
        0,
        "a cancelled transcription logged an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_stage_even_while_transcribing() {
    let clip = sample_clip();
    let h = start(load_stage(), false);
    let turn = h.turns.begin();
    h.input
        .send(speech_ended(turn, clip.samples.clone()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.shutdown.cancel();
    // Input still open: only the shutdown token can stop it.
    let result = tokio::time::timeout(Duration::from_secs(10), h.task)
        .await
        .expect("the stage stops on shutdown")
        .unwrap();
    assert!(result.is_ok());
    drop(h.input);
}

#[test]
fn a_missing_model_names_the_file_and_the_fix() {
    let settings = WhisperSettings {
        threads: 1,
        language: "en".into(),
        audio_ctx: None,
    };
    let err = WhisperEngine::load(Path::new("models/no-such-model.bin"), settings)
        .err()
        .expect("loading a missing file fails")
        .to_string();
    assert!(err.contains("models/no-such-model.bin"), "{err}");
    assert!(err.contains("models/setup.sh"), "{err}");
}

#[test]
fn a_file_that_is_not_a_model_names_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.bin");
    std::fs::write(&bogus, b"this is not a ggml file").unwrap();
    let settings = WhisperSettings {
        threads: 1,
        language: "en".into(),
        audio_ctx: None,
    };
    let err = WhisperEngine::load(&bogus, settings)
        .err()
        .expect("loading garbage fails")
        .to_string();
    assert!(err.contains("bogus.bin"), "{err}");
    assert!(err.contains("models/setup.sh"), "{err}");
}

#[test]
fn a_turn_shorter_than_a_second_is_still_transcribed() {
    // "ten of clubs", cut to its ~0.75 s of speech: a short answer must
    // come through whole, and a 50 ms scrap (under whisper.cpp's 100 ms
    // minimum, padded by the engine) must not be an error.
    let clip = corpus(&["cards"])
        .into_iter()
        .find(|c| c.name == "cards/001")
        .expect("cards/001.wav");
    let loud = |s: &f32| s.abs() > 0.02;
    let first = clip.samples.iter().position(loud).unwrap();
    let last = clip.samples.iter().rposition(loud).unwrap();
    let margin = 800; // 50 ms
    let speech =
        &clip.samples[first.saturating_sub(margin)..(last + margin).min(clip.samples.len())];
    assert!(
        speech.len() < 16_000,
        "{} samples: not short enough",
        speech.len()
    );

    let settings = WhisperSettings {
        threads: 2,
        language: "en".into(),
        audio_ctx: None,
    };
    let mut engine = WhisperEngine::load(&model_path(), settings).expect("load");
    let text = engine.transcribe(speech, None).expect("transcribe");
    assert!(
        word_error_rate(&clip.reference, &text) < 0.5,
        "{text:?} for {:.2} s of {:?}",
        speech.len() as f64 / 16_000.0,
        clip.reference
    );
    assert_eq!(
        engine.transcribe(&[0.0; 8_000], None).unwrap(),
        "",
        "silence"
    );
}
