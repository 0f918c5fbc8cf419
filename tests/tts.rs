//! The voices behind the TTS stage, with real models: what each says is
//! transcribed back by the local Whisper. Also `POST /v1/audio/speech`
//! over real HTTP, with parlor's OpenAI voice and the official OpenAI
//! Python client as clients.

use crate::support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use parlor::frame::AudioChunk;
use parlor::spec::{TtsBackend, TtsSpec};
use parlor::stages::stt::{WhisperEngine, WhisperSettings};
use parlor::stages::tts::espeak::EspeakVoice;
use parlor::stages::tts::openai::OpenAiVoice;
use parlor::stages::tts::piper::PiperVoice;
use parlor::stages::tts::piper_stream::{self, SplitModel};
use parlor::stages::tts::{load_voice, TtsError, Voice};
use tokio::sync::mpsc;

const SENTENCE: &str = "Your order ships on Friday.";

fn whisper() -> &'static Mutex<WhisperEngine> {
    static ENGINE: OnceLock<Mutex<WhisperEngine>> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let settings = WhisperSettings {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            language: "en".into(),
            audio_ctx: None,
        };
        Mutex::new(
            WhisperEngine::load(&support::model("ggml-tiny.en.bin"), settings)
                .expect("load whisper"),
        )
    })
}

/// What Whisper hears in `audio` (any rate).
fn transcribe(audio: &AudioChunk) -> String {
    let samples = parlor::audio::resample(&audio.samples, audio.sample_rate, 16_000).unwrap();
    whisper()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .transcribe(&samples, None)
        .expect("transcribe")
}

fn assert_heard(audio: &AudioChunk, words: &[&str]) {
    if let Err(why) = heard(audio, words) {
        panic!("{why}");
    }
}

/// Whether `audio` is speech in which Whisper hears every one of `words`.
fn heard(audio: &AudioChunk, words: &[&str]) -> Result<(), String> {
    let secs = audio.duration().as_secs_f64();
    assert!((0.5..=5.0).contains(&secs), "{secs} s of audio");
    let peak = audio.samples.iter().fold(0f32, |m, s| m.max(s.abs()));
    assert!(peak > 0.1, "silent: peak {peak}");
    let text = transcribe(audio).to_lowercase();
    match words.iter().find(|word| !text.contains(**word)) {
        Some(word) => Err(format!("{word:?} not in {text:?}")),
        None => Ok(()),
    }
}

/// Piper samples noise on every run (VITS' `noise_scale`), so the same
/// sentence never comes out the same twice, and Whisper tiny mishears a
/// take now and then ("your or shits on friday" was heard once in CI).
/// A working voice is heard within three takes; a broken one in none.
async fn assert_piper_heard(words: &[&str], mut take: impl AsyncFnMut() -> AudioChunk) {
    let mut misses = Vec::new();
    for _ in 0..3 {
        match heard(&take().await, words) {
            Ok(()) => {
                if !misses.is_empty() {
                    eprintln!("heard after misheard takes: {misses:?}");
                }
                return;
            }
            Err(why) => misses.push(why),
        }
    }
    panic!("no take was heard: {misses:?}");
}

fn piper_voice() -> Arc<PiperVoice> {
    static VOICE: OnceLock<Arc<PiperVoice>> = OnceLock::new();
    VOICE
        .get_or_init(|| {
            let started = Instant::now();
            let v = PiperVoice::load(
                &support::model("en_US-joe-medium.onnx"),
                &support::model("libonnxruntime.so"),
                1.0,
            )
            .expect("load piper");
            eprintln!(
                "piper load: {:.0} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
            Arc::new(v)
        })
        .clone()
}

/// Everything `voice` says for `text`, the number of chunks it came in,
/// and when the first one arrived.
async fn speak_all(voice: &dyn Voice, text: &str) -> (AudioChunk, usize, Duration) {
    let (tx, mut rx) = mpsc::channel(4);
    let started = Instant::now();
    let collect = async {
        let mut first = None;
        let mut chunks = Vec::new();
        while let Some(c) = rx.recv().await {
            first.get_or_insert_with(|| started.elapsed());
            chunks.push(c);
        }
        (chunks, first)
    };
    let (result, (chunks, first)) = tokio::join!(
        async {
            let r = voice.speak(text, &tx).await;
            drop(tx);
            r
        },
        collect
    );
    result.expect("speak");
    assert!(!chunks.is_empty(), "no audio");
    let rate = chunks[0].sample_rate;
    assert!(chunks.iter().all(|c| c.sample_rate == rate));
    let n = chunks.len();
    let samples = chunks.into_iter().flat_map(|c| c.samples).collect();
    (AudioChunk::new(rate, samples), n, first.unwrap())
}

fn report(name: &str, audio: &AudioChunk, total: Duration, first: Duration) {
    eprintln!(
        "{name}: {:.2} s of audio at {} Hz in {:.0} ms (real-time factor {:.3}), first audio after {:.0} ms",
        audio.duration().as_secs_f64(),
        audio.sample_rate,
        total.as_secs_f64() * 1e3,
        total.as_secs_f64() / audio.duration().as_secs_f64(),
        first.as_secs_f64() * 1e3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piper_says_the_sentence_whisper_hears() {
    let voice = piper_voice();
    // Warm-up: onnxruntime's first run allocates.
    speak_all(&*voice, "Hello.").await;
    let started = Instant::now();
    let (audio, chunks, first) = speak_all(&*voice, SENTENCE).await;
    report("piper", &audio, started.elapsed(), first);
    assert_eq!(audio.sample_rate, 22_050);
    assert!(
        chunks > 5,
        "audio should come in ~100 ms pieces, got {chunks}"
    );
    let mut first_take = Some(audio);
    assert_piper_heard(&["order", "friday"], async || match first_take.take() {
        Some(audio) => audio,
        None => speak_all(&*voice, SENTENCE).await.0,
    })
    .await;
}

/// The largest difference between two sounds of the same length.
fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_voice_streams_with_its_halves_and_they_say_what_the_whole_model_says() {
    let model = support::model("en_US-joe-medium.onnx");
    let runtime = support::model("libonnxruntime.so");
    let streamed = piper_voice();
    assert!(
        streamed.streams(),
        "models/en_US-joe-medium.{{encoder,decoder}}.onnx missing: run bash models/setup.sh"
    );
    let ids = streamed.phoneme_ids(SENTENCE).unwrap().remove(0);
    let whole = PiperVoice::load_whole(&model, &runtime, 1.0)
        .unwrap()
        .without_noise();
    let split = PiperVoice::load(&model, &runtime, 1.0)
        .unwrap()
        .without_noise();
    assert!(!whole.streams() && split.streams());
    let (a, b) = (
        whole.synthesize(&ids).unwrap(),
        split.synthesize(&ids).unwrap(),
    );
    assert!(a.len() > 22_050, "{} samples", a.len());
    let diff = max_difference(&a, &b);
    assert!(
        diff < 1e-3,
        "the halves differ from the whole model by {diff}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_windows_join_to_the_whole_sentence() {
    let voice = piper_voice(); // initialises onnxruntime
    let (encoder, decoder) = piper_stream::parts(&support::model("en_US-joe-medium.onnx"))
        .expect("the voice's halves (bash models/setup.sh)");
    let split = SplitModel::load(&encoder, &decoder, 2).unwrap();
    let ids = voice.phoneme_ids(SENTENCE).unwrap().remove(0);
    let latent = split.encode(&ids, [0.667, 1.0, 0.8]).unwrap();
    let windows: Vec<_> = piper_stream::windows(latent.frames()).collect();
    assert!(windows.len() >= 3, "{windows:?}");
    let whole = split.decode(&latent, 0..latent.frames()).unwrap();
    let joined: Vec<f32> = windows
        .into_iter()
        .flat_map(|w| split.decode(&latent, w).unwrap())
        .collect();
    // Exact but for float summation order inside the decoder.
    let diff = max_difference(&whole, &joined);
    assert!(diff < 1e-4, "the windows differ from the whole by {diff}");
}

#[test]
fn halves_that_do_not_fit_are_refused_at_load() {
    let _ = piper_voice(); // initialises onnxruntime
    let (encoder, decoder) =
        piper_stream::parts(&support::model("en_US-joe-medium.onnx")).expect("the voice's halves");
    // Swapped: the "encoder" does not take phoneme ids.
    let err = SplitModel::load(&decoder, &encoder, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("input_lengths"), "{err}");
    // The VAD's model as the decoder: it does not take the latent frames.
    let err = SplitModel::load(&encoder, &support::model("silero_vad.onnx"), 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("split_piper.py"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piper_speaks_sentence_by_sentence() {
    let voice = piper_voice();
    let ids = voice.phoneme_ids("Hello, world. How are you?").unwrap();
    assert_eq!(ids.len(), 2, "two sentences: {ids:?}");
    // ^ _ ... , _ (space) _ ... . _ $ : the comma, the space after it and
    // the period are phonemes.
    assert_eq!(&ids[0][..2], [1, 0]);
    assert_eq!(ids[0].last(), Some(&2));
    assert!(ids[0].windows(4).any(|w| w == [8, 0, 3, 0]), "{:?}", ids[0]);
    assert!(ids[0].ends_with(&[10, 0, 2]), "{:?}", ids[0]);
    assert!(ids[1].ends_with(&[13, 0, 2]), "{:?}", ids[1]);
}

/// The ids piper-tts 1.8.0 (`PiperVoice.phonemize` + `phonemes_to_ids`,
/// with its bundled espeak-ng) gives for the same voice, recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phoneme_ids_match_piper_tts() {
    let voice = piper_voice();
    let cases: Vec<(&str, Vec<Vec<i64>>)> = vec![
        (
            "Your order ships on Friday.",
            vec![vec![
                1, 0, 22, 0, 100, 0, 88, 0, 3, 0, 120, 0, 54, 0, 122, 0, 88, 0, 17, 0, 60, 0, 3, 0,
                96, 0, 120, 0, 74, 0, 28, 0, 31, 0, 3, 0, 121, 0, 54, 0, 26, 0, 3, 0, 19, 0, 88, 0,
                120, 0, 14, 0, 74, 0, 17, 0, 18, 0, 74, 0, 10, 0, 2,
            ]],
        ),
        (
            "Hello, world. How are you?",
            vec![
                vec![
                    1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 8, 0, 3, 0, 35, 0, 120, 0,
                    62, 0, 122, 0, 24, 0, 17, 0, 10, 0, 2,
                ],
                vec![
                    1, 0, 20, 0, 120, 0, 14, 0, 100, 0, 3, 0, 51, 0, 122, 0, 88, 0, 3, 0, 22, 0,
                    33, 0, 122, 0, 13, 0, 2,
                ],
            ],
        ),
        (
            "It costs $3.50; ok: yes!",
            vec![vec![
                1, 0, 74, 0, 32, 0, 3, 0, 23, 0, 120, 0, 54, 0, 31, 0, 32, 0, 31, 0, 3, 0, 17, 0,
                120, 0, 51, 0, 122, 0, 24, 0, 60, 0, 3, 0, 126, 0, 88, 0, 120, 0, 21, 0, 122, 0, 3,
                0, 28, 0, 54, 0, 74, 0, 26, 0, 32, 0, 3, 0, 19, 0, 120, 0, 14, 0, 74, 0, 34, 0, 3,
                0, 38, 0, 120, 0, 21, 0, 59, 0, 88, 0, 27, 0, 100, 0, 12, 0, 3, 0, 121, 0, 27, 0,
                100, 0, 23, 0, 120, 0, 18, 0, 74, 0, 11, 0, 3, 0, 22, 0, 120, 0, 61, 0, 31, 0, 4,
                0, 2,
            ]],
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(voice.phoneme_ids(text).unwrap(), expected, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_says_the_sentence_whisper_hears() {
    // 150 words per minute: at espeak-ng's default 175 whisper tiny.en hears
    // "Your lordship" (the same garbling models/setup.sh picks its clips around).
    let voice = EspeakVoice::new("en-us", 150.0 / 175.0).expect("espeak-ng");
    let started = Instant::now();
    let (audio, _, first) = speak_all(&voice, SENTENCE).await;
    report("espeak", &audio, started.elapsed(), first);
    assert_eq!(audio.sample_rate, 22_050);
    assert_heard(&audio, &["order", "friday"]);
}

#[tokio::test]
async fn empty_text_sends_nothing() {
    let voice = EspeakVoice::new("en-us", 1.0).unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    voice.speak("  \n ", &tx).await.unwrap();
    drop(tx);
    assert!(rx.recv().await.is_none());
}

#[tokio::test]
async fn text_starting_with_a_dash_is_spoken_not_read_as_an_option() {
    let voice = EspeakVoice::new("en-us", 1.0).unwrap();
    let (audio, _, _) = speak_all(&voice, "-v nothing here").await;
    assert!(audio.duration() > Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_channel_returns_promptly() {
    let piper = piper_voice();
    let espeak = EspeakVoice::new("en-us", 1.0).unwrap();
    for voice in [&*piper as &dyn Voice, &espeak] {
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        let started = Instant::now();
        voice.speak(SENTENCE, &tx).await.expect("ok when closed");
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "{}: {:?}",
            voice.name(),
            started.elapsed()
        );
    }
    // Closed mid-speech: Piper stops before the next sentence.
    let long = "This is the first sentence of a long reply. This is the second one. \
                And here is a third. A fourth follows. Then a fifth, and that is all.";
    let (tx, mut rx) = mpsc::channel(1);
    let started = Instant::now();
    let speaking = tokio::spawn({
        let piper = piper.clone();
        async move { piper.speak(long, &tx).await }
    });
    rx.recv().await.expect("first audio");
    drop(rx);
    speaking.await.unwrap().expect("ok when cancelled");
    let cancelled = started.elapsed();
    let whole_started = Instant::now();
    speak_all(&*piper, long).await;
    let whole = whole_started.elapsed();
    eprintln!("cancelled after the first audio: returned after {cancelled:?}; the whole reply takes {whole:?}");
    assert!(cancelled < whole, "{cancelled:?} vs {whole:?}");
}

fn spec(backend: TtsBackend, model: Option<&str>) -> TtsSpec {
    TtsSpec {
        backend,
        model: model.map(str::to_string),
        voice: None,
        instructions: None,
        speed: 1.0,
        base_url: None,
        api_key_env: "OPENAI_API_KEY".into(),
        onnxruntime: support::model("libonnxruntime.so"),
        sample_rate: 24_000,
    }
}

#[test]
fn a_missing_model_names_the_setup_fix() {
    let err = load_voice(&spec(TtsBackend::Local, Some("models/nope.onnx")))
        .err()
        .expect("missing model");
    assert!(matches!(err, TtsError::ModelMissing { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("models/nope.onnx"), "{msg}");
    assert!(msg.contains("bash models/setup.sh"), "{msg}");
}

#[test]
fn an_unknown_espeak_voice_is_refused_at_load() {
    let mut s = spec(TtsBackend::Espeak, None);
    s.voice = Some("xx-nope".into());
    let msg = load_voice(&s).err().expect("unknown voice").to_string();
    assert!(msg.contains("xx-nope"), "{msg}");
}

#[test]
fn load_voice_builds_each_backend() {
    assert_eq!(
        load_voice(&spec(TtsBackend::Espeak, None)).unwrap().name(),
        "espeak"
    );
    assert_eq!(
        load_voice(&spec(TtsBackend::Openai, None)).unwrap().name(),
        "openai"
    );
    let local = spec(
        TtsBackend::Local,
        Some(
            &support::model("en_US-joe-medium.onnx")
                .display()
                .to_string(),
        ),
    );
    assert_eq!(load_voice(&local).unwrap().name(), "piper");
}

// --- POST /v1/audio/speech -------------------------------------------------

/// parlor's server with the Piper voice; the planner model is the small one
/// (the route does not use it, but the server always has one).
fn server() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let options = parlor::llm::LocalLlmOptions {
            context_len: 512,
            ..Default::default()
        };
        let voice: Arc<dyn Voice> = piper_voice();
        support::start_server_with(
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            options,
            Vec::new(),
            Some(voice),
        )
        .0
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_voice_streams_from_the_speech_route() {
    let voice = OpenAiVoice::new(&format!("{}/v1", server()), "tts-1", "alloy");
    let started = Instant::now();
    let (audio, chunks, first) = speak_all(&voice, SENTENCE).await;
    report(
        "openai voice via parlor's route",
        &audio,
        started.elapsed(),
        first,
    );
    assert_eq!(audio.sample_rate, 24_000);
    assert!(chunks > 1, "streamed in {chunks} chunk(s)");
    let mut first_take = Some(audio);
    assert_piper_heard(&["order", "friday"], async || match first_take.take() {
        Some(audio) => audio,
        None => speak_all(&voice, SENTENCE).await.0,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_streams_pcm_and_answers_wav() {
    let client = reqwest::Client::new();
    let url = format!("{}/v1/audio/speech", server());
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"model": "tts-1", "input": SENTENCE, "voice": "alloy", "response_format": "pcm"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/pcm");
    let mut stream = response.bytes_stream();
    let mut pieces = 0;
    let mut bytes = Vec::new();
    while let Some(piece) = futures::StreamExt::next(&mut stream).await {
        pieces += 1;
        bytes.extend_from_slice(&piece.unwrap());
    }
    assert!(pieces > 1, "one piece: not streamed");
    assert_eq!(bytes.len() % 2, 0);
    let secs = bytes.len() as f64 / 2.0 / 24_000.0;
    assert!((0.5..=5.0).contains(&secs), "{secs} s");

    let audio = post_wav(SENTENCE, 1.0).await;
    assert_eq!(audio.sample_rate, 24_000);
    let normal_len = audio.samples.len();
    let mut first_take = Some(audio);
    assert_piper_heard(&["order", "friday"], async || match first_take.take() {
        Some(audio) => audio,
        None => post_wav(SENTENCE, 1.0).await,
    })
    .await;

    // `speed` is honoured: twice as fast is about half as long, and still
    // heard (Whisper tiny mishears some of it at that pace: "your oral
    // shits on friday").
    let fast = post_wav(SENTENCE, 2.0).await;
    let ratio = fast.samples.len() as f64 / normal_len as f64;
    assert!(
        (0.35..=0.7).contains(&ratio),
        "speed 2 gave {ratio:.2} of the length"
    );
    let mut first_take = Some(fast);
    assert_piper_heard(&["friday"], async || match first_take.take() {
        Some(audio) => audio,
        None => post_wav(SENTENCE, 2.0).await,
    })
    .await;
}

/// `text` spoken at `speed` by the route, asked for as a WAV.
async fn post_wav(text: &str, speed: f32) -> AudioChunk {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/audio/speech", server()))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"model": "x", "input": text, "response_format": "wav", "speed": speed})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    parlor::audio::read_wav_bytes(&response.bytes().await.unwrap()).expect("a WAV")
}

async fn post_raw(body: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/audio/speech", server()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_refuses_bad_requests_in_openai_shape() {
    let (status, body) = post_raw(r#"{"model": "tts-1", "input": "  ", "voice": "alloy"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "input", "{body}");

    let (status, body) = post_raw(
        r#"{"model": "tts-1", "input": "Hi.", "voice": "alloy", "response_format": "mp3"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("mp3") && msg.contains("pcm, wav"), "{msg}");

    let (status, body) = post_raw("this is not json").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_json", "{body}");

    let (status, body) = post_raw(r#"{"model": "tts-1", "input": "Hi.", "speed": 9}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "speed", "{body}");

    let (status, body) = post_raw(r#"{"model": "tts-1", "voice": "alloy"}"#).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_voice_turns_a_400_into_an_error_with_the_servers_message() {
    let voice = OpenAiVoice::new(&format!("{}/v1", server()), "tts-1", "alloy");
    let (tx, _rx) = mpsc::channel(4);
    let err = voice
        .speak(&"word ".repeat(1000), &tx)
        .await
        .expect_err("too long");
    let msg = err.to_string();
    assert!(matches!(err, TtsError::Server { status: 400, .. }), "{msg}");
    assert!(msg.contains("the limit is 4096"), "{msg}");
}

#[tokio::test]
async fn openai_voice_names_an_unreachable_server() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let voice = OpenAiVoice::new(&format!("http://127.0.0.1:{port}/v1"), "tts-1", "alloy");
    let (tx, _rx) = mpsc::channel(4);
    let msg = voice.speak("Hello.", &tx).await.unwrap_err().to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_client_gets_a_wav() {
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().join("speech.wav");
    let output = tokio::process::Command::new(support::python())
        .arg(support::root().join("tests/peers/openai_speech_client.py"))
        .arg(format!("{}/v1", server()))
        .arg(&out)
        .arg(SENTENCE)
        .output()
        .await
        .expect("run the python client");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "client failed: {stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(seen["content_type"], "audio/wav", "{seen}");
    assert_eq!(seen["mp3"]["status"], 400, "{seen}");
    let audio = parlor::audio::read_wav_bytes(&std::fs::read(&out).unwrap()).expect("a WAV");
    assert_eq!(audio.sample_rate, 24_000);
    let mut first_take = Some(audio);
    assert_piper_heard(&["order", "friday"], async || match first_take.take() {
        Some(audio) => audio,
        None => post_wav(SENTENCE, 1.0).await,
    })
    .await;
}
