//! Reply audio paced out to a live caller, and what of it they have heard.
//!
//! parlor sends reply audio at the speed it plays, a little ahead
//! ([`Playout::lead`]), instead of as fast as the voice makes it. That keeps
//! the caller's buffer short, so a barge-in silences parlor at once (the
//! caller drops at most the lead), and it lets parlor know how much was
//! played: the caller plays what it receives as it receives it, so at any
//! moment the played audio is what was sent minus what is still buffered.
//! The text of the pieces played (and the played share of the piece being
//! said) is what the caller heard.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::frame::TurnId;

/// One piece of a turn's spoken audio: a sentence of the reply, or a filler.
#[derive(Debug)]
struct Piece {
    /// The reply text it says; `None` for a filler (not part of the reply).
    text: Option<String>,
    samples: u64,
}

/// The audio of the turn being played.
#[derive(Debug)]
struct TurnAudio {
    turn: TurnId,
    pieces: Vec<Piece>,
    sent: u64,
}

/// Pacing and hearing for one call's reply audio.
#[derive(Debug)]
pub struct Playout {
    rate: u32,
    lead: Duration,
    /// When the caller's buffer runs dry at the current rate of sending.
    drains_at: Option<Instant>,
    current: Option<TurnAudio>,
    /// When each of the last few turns' audio began.
    first_sent: VecDeque<(TurnId, Instant)>,
}

/// Turns whose first-audio time is kept.
const REMEMBERED: usize = 8;

impl Playout {
    /// Audio at `rate` Hz, sent at most `lead` ahead of playback.
    pub fn new(rate: u32, lead: Duration) -> Self {
        Self {
            rate,
            lead,
            drains_at: None,
            current: None,
            first_sent: VecDeque::new(),
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn lead(&self) -> Duration {
        self.lead
    }

    /// When the next audio may be sent (now, if the buffer is short).
    pub fn next_send_at(&self, now: Instant) -> Instant {
        match self.drains_at {
            Some(drains) if drains > now + self.lead => drains - self.lead,
            _ => now,
        }
    }

    /// Whether the caller is hearing parlor now.
    pub fn is_playing(&self, now: Instant) -> bool {
        self.drains_at.is_some_and(|d| d > now)
    }

    /// When playback of what was sent ends, if it is still going.
    pub fn drains_at(&self) -> Option<Instant> {
        self.drains_at
    }

    /// The turn whose audio was sent last, if any.
    pub fn turn(&self) -> Option<TurnId> {
        self.current.as_ref().map(|c| c.turn)
    }

    /// When the first audio of `turn` was sent (remembered for the last
    /// few turns, past a stop).
    pub fn first_sent_at(&self, turn: TurnId) -> Option<Instant> {
        self.first_sent
            .iter()
            .find(|(t, _)| *t == turn)
            .map(|(_, at)| *at)
    }

    /// A new piece of `turn`'s audio starts: reply text, or a filler.
    pub fn start_piece(&mut self, turn: TurnId, text: Option<String>, now: Instant) {
        let current = self.current_for(turn, now);
        current.pieces.push(Piece { text, samples: 0 });
    }

    /// `samples` of `turn`'s audio were sent at `now`.
    pub fn sent(&mut self, turn: TurnId, samples: usize, now: Instant) {
        let duration = Duration::from_secs_f64(samples as f64 / self.rate as f64);
        let current = self.current_for(turn, now);
        current.sent += samples as u64;
        match current.pieces.last_mut() {
            Some(piece) => piece.samples += samples as u64,
            None => current.pieces.push(Piece {
                text: None,
                samples: samples as u64,
            }),
        }
        let start = self.drains_at.filter(|d| *d > now).unwrap_or(now);
        self.drains_at = Some(start + duration);
    }

    /// How much of the current turn's audio has played by `now`.
    pub fn played(&self, now: Instant) -> Duration {
        let Some(current) = &self.current else {
            return Duration::ZERO;
        };
        let sent = Duration::from_secs_f64(current.sent as f64 / self.rate as f64);
        let buffered = self
            .drains_at
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or_default();
        sent.saturating_sub(buffered)
    }

    /// The reply text the caller has heard of the current turn by `now`:
    /// the pieces played whole, and the played share of the words of the
    /// piece being said.
    pub fn heard(&self, now: Instant) -> String {
        let Some(current) = &self.current else {
            return String::new();
        };
        let mut left = (self.played(now).as_secs_f64() * self.rate as f64).round() as u64;
        let mut heard: Vec<&str> = Vec::new();
        for piece in &current.pieces {
            if left == 0 {
                break;
            }
            let played = left.min(piece.samples);
            left -= played;
            let Some(text) = &piece.text else {
                continue;
            };
            let words: Vec<&str> = text.split_whitespace().collect();
            let share = if piece.samples == 0 {
                0.0
            } else {
                played as f64 / piece.samples as f64
            };
            let n = (words.len() as f64 * share).round() as usize;
            heard.extend(&words[..n.min(words.len())]);
        }
        heard.join(" ")
    }

    /// Stop: the caller drops its buffer (barge-in), nothing is playing.
    pub fn stop(&mut self) {
        self.drains_at = None;
        self.current = None;
    }

    fn current_for(&mut self, turn: TurnId, now: Instant) -> &mut TurnAudio {
        if self.current.as_ref().is_none_or(|c| c.turn != turn) {
            self.current = Some(TurnAudio {
                turn,
                pieces: Vec::new(),
                sent: 0,
            });
            if self.first_sent_at(turn).is_none() {
                if self.first_sent.len() == REMEMBERED {
                    self.first_sent.pop_front();
                }
                self.first_sent.push_back((turn, now));
            }
        }
        self.current.as_mut().expect("set above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 1_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn sends_only_a_lead_ahead_of_playback() {
        let t0 = Instant::now();
        let mut p = Playout::new(RATE, ms(100));
        assert_eq!(p.next_send_at(t0), t0);
        p.sent(TurnId(1), 500, t0); // 500 ms buffered
        assert!(p.is_playing(t0));
        assert_eq!(p.next_send_at(t0), t0 + ms(400));
        assert_eq!(p.played(t0 + ms(200)), ms(200));
        assert!(!p.is_playing(t0 + ms(500)));
        // After a gap the buffer starts again from empty.
        p.sent(TurnId(1), 100, t0 + ms(900));
        assert_eq!(p.drains_at(), Some(t0 + ms(1_000)));
        assert_eq!(p.played(t0 + ms(950)), ms(550));
    }

    #[test]
    fn heard_is_the_played_pieces_and_share_of_the_current_one() {
        let t0 = Instant::now();
        let turn = TurnId(3);
        let mut p = Playout::new(RATE, ms(100));
        p.start_piece(turn, None, t0);
        p.sent(turn, 200, t0); // a filler: heard, but not reply text
        p.start_piece(turn, Some("Your order shipped.".into()), t0);
        p.sent(turn, 300, t0);
        p.start_piece(turn, Some("It arrives on Friday the third.".into()), t0);
        p.sent(turn, 600, t0);
        assert_eq!(p.heard(t0 + ms(100)), "");
        assert_eq!(p.heard(t0 + ms(500)), "Your order shipped.");
        // Half of the second piece: three of its six words.
        assert_eq!(p.heard(t0 + ms(800)), "Your order shipped. It arrives on");
        assert_eq!(
            p.heard(t0 + ms(5_000)),
            "Your order shipped. It arrives on Friday the third."
        );
        p.stop();
        assert_eq!(p.heard(t0 + ms(5_000)), "");
        assert_eq!(p.first_sent_at(turn), Some(t0), "kept past the stop");
        assert!(!p.is_playing(t0));
    }

    #[test]
    fn a_new_turn_starts_its_own_account() {
        let t0 = Instant::now();
        let mut p = Playout::new(RATE, ms(100));
        p.start_piece(TurnId(1), Some("One.".into()), t0);
        p.sent(TurnId(1), 100, t0);
        p.start_piece(TurnId(2), Some("Two.".into()), t0 + ms(500));
        p.sent(TurnId(2), 100, t0 + ms(500));
        assert_eq!(p.turn(), Some(TurnId(2)));
        assert_eq!(p.first_sent_at(TurnId(2)), Some(t0 + ms(500)));
        assert_eq!(p.heard(t0 + ms(700)), "Two.");
    }
}
