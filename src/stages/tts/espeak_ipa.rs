//! espeak-ng's text to IPA in process, through its shared library.
//!
//! Piper needs a sentence's phonemes before it can make a sound, so their
//! cost is paid before every reply's first audio. Starting the `espeak-ng`
//! command costs ~9 ms (most of it loading its data); the library, loaded
//! once, answers in ~10 µs. It is opened at run time (`libespeak-ng.so.1`,
//! which the `espeak-ng` package installs), as onnxruntime is, so building
//! parlor needs no espeak headers.
//!
//! `espeak_TextToPhonemes` is what piper-phonemize calls: one clause a call,
//! its punctuation dropped, the same lines `espeak-ng --ipa` prints.
//! espeak-ng keeps one voice and its buffers in globals, so every call
//! holds one lock; a call is microseconds, so no caller waits long.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

use libloading::Library;

use super::espeak::one_line;
use super::voice::TtsError;

const LIBRARY: &str = "libespeak-ng.so.1";

/// `espeak_AUDIO_OUTPUT::AUDIO_OUTPUT_SYNCHRONOUS`: no audio thread.
const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
/// `espeakINITIALIZE_DONT_EXIT`: without it espeak-ng calls `exit()` when
/// its data is missing, taking parlor down with it.
const INITIALIZE_DONT_EXIT: c_int = 0x8000;
/// `espeakCHARS_UTF8`.
const CHARS_UTF8: c_int = 1;
/// `espeakPHONEMES_IPA`: phonemes as IPA characters, not espeak's names.
const PHONEMES_IPA: c_int = 0x02;

type Initialize = unsafe extern "C" fn(c_int, c_int, *const c_char, c_int) -> c_int;
type SetVoiceByName = unsafe extern "C" fn(*const c_char) -> c_int;
type TextToPhonemes = unsafe extern "C" fn(*mut *const c_void, c_int, c_int) -> *const c_char;

/// The loaded library and the voice last set on it.
struct Espeak {
    set_voice: SetVoiceByName,
    to_phonemes: TextToPhonemes,
    voice: Option<String>,
    /// Keeps the functions above loaded.
    _library: Library,
}

static ESPEAK: OnceLock<Result<Mutex<Espeak>, String>> = OnceLock::new();

/// Load and initialise the library once; later calls return the result.
fn espeak() -> Result<&'static Mutex<Espeak>, TtsError> {
    ESPEAK
        .get_or_init(|| load().map(Mutex::new))
        .as_ref()
        .map_err(|e| TtsError::Espeak(e.clone()))
}

fn load() -> Result<Espeak, String> {
    // SAFETY: libespeak-ng runs no code on load beyond its own globals'
    // initialisers, and the signatures below are speak_lib.h's (API
    // revision 12, espeak-ng 1.49 to 1.52).
    unsafe {
        let library = Library::new(LIBRARY).map_err(|e| {
            format!("cannot load {LIBRARY}: {e} (fix: `apt-get install espeak-ng`)")
        })?;
        let initialize: Initialize = *library
            .get(b"espeak_Initialize\0")
            .map_err(|e| e.to_string())?;
        let set_voice: SetVoiceByName = *library
            .get(b"espeak_SetVoiceByName\0")
            .map_err(|e| e.to_string())?;
        let to_phonemes: TextToPhonemes = *library
            .get(b"espeak_TextToPhonemes\0")
            .map_err(|e| e.to_string())?;
        // The default data directory; the sample rate it returns is not
        // needed, only that it is not an error (-1).
        let rate = initialize(
            AUDIO_OUTPUT_SYNCHRONOUS,
            0,
            std::ptr::null(),
            INITIALIZE_DONT_EXIT,
        );
        if rate <= 0 {
            return Err(format!(
                "{LIBRARY} did not initialise (is espeak-ng-data installed?)"
            ));
        }
        Ok(Espeak {
            set_voice,
            to_phonemes,
            voice: None,
            _library: library,
        })
    }
}

/// Whether the library loads and knows `voice`: for a voice's load time,
/// so a missing library or voice fails there and not on the first reply.
///
/// # Errors
/// As [`ipa`].
pub fn check(voice: &str) -> Result<(), TtsError> {
    ipa("a", voice).map(drop)
}

/// The IPA of `text` in `voice`, one line per clause, as `espeak-ng -q
/// --ipa -v VOICE` prints it.
///
/// # Errors
/// [`TtsError::Espeak`] when the library cannot be loaded or does not know
/// the voice.
pub fn ipa(text: &str, voice: &str) -> Result<String, TtsError> {
    let mut espeak = espeak()?.lock().unwrap_or_else(|p| p.into_inner());
    if espeak.voice.as_deref() != Some(voice) {
        let name = CString::new(voice)
            .map_err(|_| TtsError::Espeak(format!("voice {voice:?} has a NUL byte")))?;
        // SAFETY: a NUL-terminated string that outlives the call; the
        // lock keeps other callers out of espeak-ng's globals.
        let status = unsafe { (espeak.set_voice)(name.as_ptr()) };
        if status != 0 {
            espeak.voice = None;
            return Err(TtsError::Espeak(format!(
                "voice \"{voice}\" is unknown (error {status}; fix: `espeak-ng --voices` lists the voices)"
            )));
        }
        espeak.voice = Some(voice.to_string());
    }
    let line = CString::new(one_line(text)).expect("control characters were replaced");
    let mut next: *const c_void = line.as_ptr().cast();
    let mut out = String::new();
    while !next.is_null() {
        // SAFETY: `next` points into `line` (alive to the end of this
        // function) or is set to null by espeak-ng at the text's end; the
        // returned string is espeak-ng's buffer, copied before the next call.
        let clause = unsafe {
            let phonemes = (espeak.to_phonemes)(&mut next, CHARS_UTF8, PHONEMES_IPA);
            if phonemes.is_null() {
                break;
            }
            CStr::from_ptr(phonemes).to_string_lossy().into_owned()
        };
        out.push_str(&clause);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `espeak-ng` command's lines for the same text (the package is
    /// installed wherever parlor's tests run: models/setup.sh).
    fn command_ipa(text: &str) -> Vec<String> {
        let out = std::process::Command::new("espeak-ng")
            .args(["-q", "--ipa", "-v", "en-us", text])
            .output()
            .expect("espeak-ng");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn the_library_says_what_the_command_says() {
        for text in [
            "Your order ships on Friday.",
            "Hello, world. How are you?",
            "It costs $3.50; ok: yes!",
            "Dr. Smith lives at 221B Baker St. in London, doesn't he?",
        ] {
            let lines: Vec<String> = ipa(text, "en-us")
                .unwrap()
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            assert_eq!(lines, command_ipa(text), "{text}");
        }
    }

    #[test]
    fn an_unknown_voice_is_an_error_and_the_next_call_still_works() {
        let err = ipa("hello", "no-such-voice").unwrap_err().to_string();
        assert!(err.contains("no-such-voice"), "{err}");
        assert!(ipa("hello", "en-us").unwrap().contains("həlˈoʊ"));
    }

    #[test]
    fn control_characters_do_not_cut_the_text() {
        let lines = ipa("one\ntwo\0three", "en-us").unwrap();
        assert_eq!(lines.trim().lines().count(), 1, "{lines:?}");
        assert!(lines.contains("θɹˈiː"), "{lines:?}");
    }
}
