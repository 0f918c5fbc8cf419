//! The first audio of a reply goes before more of its text.
//!
//! On a machine that runs both models (2 cores, Piper with 2 threads and
//! llama.cpp with 2), the voice making a reply's first piece and the
//! planner writing the rest of the reply share the cores, and the first
//! audio, the one thing the caller is waiting for, comes later. The text
//! after the first piece is not needed until that piece has been heard
//! (a second or more), so a local planner waits between tokens while a
//! first piece is being made.
//!
//! The mark is process-wide, not per call: with several calls on one
//! machine, whichever call's first audio is being made goes first. A wait
//! is bounded by [`MAX_WAIT`], so a stuck voice cannot stop a planner.

use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// The longest a planner waits for first audio before it goes on anyway
/// (Piper makes a first clause in ~100 ms on 2 cores).
pub const MAX_WAIT: Duration = Duration::from_millis(400);

/// How many first pieces are being made now.
#[derive(Default)]
pub struct FirstAudio {
    making: Mutex<usize>,
    done: Condvar,
}

impl FirstAudio {
    /// The process's mark, which voices set and local planners wait on.
    pub fn global() -> &'static FirstAudio {
        static FIRST_AUDIO: OnceLock<FirstAudio> = OnceLock::new();
        FIRST_AUDIO.get_or_init(FirstAudio::default)
    }

    /// A first piece is being made until the returned guard drops.
    pub fn making(&'static self) -> Making {
        *self.count() += 1;
        Making(self)
    }

    /// Wait while any first piece is being made, at most [`MAX_WAIT`].
    /// Blocks the thread: for a model's own thread, never an async task.
    pub fn wait_blocking(&self) {
        let making = self.count();
        let _ = self
            .done
            .wait_timeout_while(making, MAX_WAIT, |n| *n > 0)
            .unwrap_or_else(PoisonError::into_inner);
    }

    fn count(&self) -> std::sync::MutexGuard<'_, usize> {
        // A count stays right even if a holder panicked.
        self.making.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A first piece being made; dropped when it is done (or abandoned).
pub struct Making(&'static FirstAudio);

impl Drop for Making {
    fn drop(&mut self) {
        let mut making = self.0.count();
        *making -= 1;
        if *making == 0 {
            self.0.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn leaked() -> &'static FirstAudio {
        Box::leak(Box::default())
    }

    #[test]
    fn a_wait_ends_when_the_first_piece_is_made() {
        let mark = leaked();
        let making = mark.making();
        let waiter = std::thread::spawn(move || {
            let started = Instant::now();
            mark.wait_blocking();
            started.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(making);
        let waited = waiter.join().unwrap();
        assert!(waited >= Duration::from_millis(40), "{waited:?}");
        assert!(
            waited < MAX_WAIT,
            "woken when done, not at the bound: {waited:?}"
        );
    }

    #[test]
    fn nothing_being_made_means_no_wait_and_a_stuck_voice_is_bounded() {
        let mark = leaked();
        let started = Instant::now();
        mark.wait_blocking();
        assert!(started.elapsed() < Duration::from_millis(20));
        let _stuck = mark.making();
        let started = Instant::now();
        mark.wait_blocking();
        assert!(started.elapsed() >= MAX_WAIT);
    }
}
