//! Turn ids and per-turn cancellation.
//!
//! Barge-in is cancellation, not a frame: a frame would wait behind audio in
//! a bounded channel. When the VAD hears new speech it calls
//! [`Turns::begin`], which (when barge-in is on) cancels every turn still in
//! flight. Stages working on a turn hold its token and stop on it; frames of a
//! cancelled turn that are still queued are dropped on sight with
//! [`Turns::is_live`].
//!
//! A live call's edge also keeps two facts here that stages upstream of it
//! need: whether parlor's voice is playing to the caller right now (the VAD's
//! echo guard), and what the caller actually heard of a reply cut short by
//! barge-in (the planner keeps only that in the conversation).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::frame::TurnId;

/// How many finished-or-running turns keep their token; older ones count as
/// stale. Bounds memory on a long call without any clean-up calls.
const REMEMBERED_TURNS: usize = 64;

pub struct Turns {
    barge_in: bool,
    parent: CancellationToken,
    state: Mutex<TurnState>,
    playing: AtomicBool,
    /// Replies cut short: the turn, the words the caller heard, and how
    /// much of its audio had played.
    heard: Mutex<Vec<(TurnId, String, Duration)>>,
}

struct TurnState {
    next: u64,
    live: VecDeque<(TurnId, CancellationToken)>,
}

impl Turns {
    /// `barge_in`: whether a new turn cancels the ones still in flight (a
    /// live call) or lets them finish (transcribing a file). `parent` is the
    /// pipeline's shutdown token: shutting down cancels every turn.
    pub fn new(barge_in: bool, parent: CancellationToken) -> Self {
        Self {
            barge_in,
            parent,
            state: Mutex::new(TurnState {
                next: 1,
                live: VecDeque::new(),
            }),
            playing: AtomicBool::new(false),
            heard: Mutex::new(Vec::new()),
        }
    }

    /// Start a new turn, cancelling the previous ones if barge-in is on.
    pub fn begin(&self) -> TurnId {
        let mut state = self.state.lock().expect("turn state poisoned");
        if self.barge_in {
            for (_, token) in state.live.drain(..) {
                token.cancel();
            }
        }
        let turn = TurnId(state.next);
        state.next += 1;
        if state.live.len() >= REMEMBERED_TURNS {
            state.live.pop_front();
        }
        state.live.push_back((turn, self.parent.child_token()));
        turn
    }

    /// The token that fires when `turn` is cancelled. An unknown or
    /// forgotten turn gets an already-cancelled token, so stale work stops.
    pub fn token(&self, turn: TurnId) -> CancellationToken {
        let state = self.state.lock().expect("turn state poisoned");
        match state.live.iter().find(|(t, _)| *t == turn) {
            Some((_, token)) => token.clone(),
            None => {
                let token = CancellationToken::new();
                token.cancel();
                token
            }
        }
    }

    /// Whether frames of `turn` are still wanted.
    pub fn is_live(&self, turn: TurnId) -> bool {
        let state = self.state.lock().expect("turn state poisoned");
        state
            .live
            .iter()
            .any(|(t, token)| *t == turn && !token.is_cancelled())
    }

    /// Cancel one turn (e.g. the caller hung up mid-reply).
    pub fn cancel(&self, turn: TurnId) {
        let state = self.state.lock().expect("turn state poisoned");
        if let Some((_, token)) = state.live.iter().find(|(t, _)| *t == turn) {
            token.cancel();
        }
    }

    /// Say whether parlor's reply is playing to the caller (set by the
    /// call's edge, which paces the audio out).
    pub fn set_playing(&self, playing: bool) {
        self.playing.store(playing, Ordering::Relaxed);
    }

    pub fn is_playing(&self) -> bool {
        self.playing.load(Ordering::Relaxed)
    }

    /// Record that `turn`'s reply was cut short after `played` of its
    /// audio, and the caller heard only `text` of it.
    pub fn record_heard(&self, turn: TurnId, text: String, played: Duration) {
        let mut heard = self.heard.lock().expect("heard poisoned");
        if heard.len() >= REMEMBERED_TURNS {
            heard.remove(0);
        }
        heard.push((turn, text, played));
    }

    /// How much of `turn`'s reply audio had played when it was cut short,
    /// if it was (the realtime stage tells its model with a truncation).
    pub fn played_before_cut(&self, turn: TurnId) -> Option<Duration> {
        let heard = self.heard.lock().expect("heard poisoned");
        heard.iter().find(|(t, ..)| *t == turn).map(|(.., d)| *d)
    }

    /// What the caller heard of `turn`'s reply, if it was cut short; asked
    /// once (the planner trims its history with it).
    pub fn take_heard(&self, turn: TurnId) -> Option<String> {
        let mut heard = self.heard.lock().expect("heard poisoned");
        let i = heard.iter().position(|(t, ..)| *t == turn)?;
        Some(heard.remove(i).1)
    }
}
