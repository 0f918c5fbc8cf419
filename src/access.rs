//! Who is calling, and what they may do: the `[auth]` and `[access]`
//! tables of a pipeline spec, and the keyring that turns an API key into a
//! caller.
//!
//! Kept apart from `spec.rs` and `mcp/` because it is shared by both ends:
//! the server authenticates with the [`Keyring`] (without knowing axum
//! here), and the policy layer (`mcp::policy`) enforces the [`AccessSpec`].
//!
//! # Keys
//! Keys are never written in a spec (specs are committed and shared): the
//! spec names an environment variable holding `key:principal:role` entries
//! separated by commas. Only the SHA-256 of each key is kept in memory, and
//! a presented key is compared digest to digest in constant time, so neither
//! the comparison's timing nor a memory dump gives a key away.

use std::num::NonZeroU32;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::mcp::AuditContext;

/// A caller as the policy layer and the audit log see it.
pub type Caller = AuditContext;

/// The role that `admin_only` rules let through.
pub const ADMIN_ROLE: &str = "admin";

/// `[auth]`: every `/v1/*` request must present a key. Without this table
/// the server is open and every caller is `anonymous` with role `caller`
/// (what a local demo wants).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// The environment variable holding `key:principal:role,...`. An env
    /// var, not the keys: a spec is committed, keys are not.
    pub keys_env: String,
}

/// `[access]`: which roles may call which tools, and how often.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSpec {
    /// `[[access.tool]]` rules; every rule that matches a tool applies.
    #[serde(default)]
    pub tool: Vec<ToolRule>,
    /// `[[access.limit]]` token buckets, each per principal.
    #[serde(default)]
    pub limit: Vec<LimitRule>,
}

impl AccessSpec {
    /// Whether any rule restricts anything (such a spec needs an audit log:
    /// a refusal nobody can see later is not a policy).
    pub fn restricts(&self) -> bool {
        !self.tool.is_empty() || !self.limit.is_empty()
    }
}

/// One tool's (or one server's tools') role rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRule {
    /// The tool as the model sees it, `server__tool`, or `server__*` for
    /// every tool of a server.
    pub tool: String,
    /// Only the `admin` role may call it.
    #[serde(default)]
    pub admin_only: bool,
    /// If not empty, only these roles may call it.
    #[serde(default)]
    pub roles: Vec<String>,
    /// These roles may never call it (wins over `roles`).
    #[serde(default)]
    pub deny_roles: Vec<String>,
    /// It changes something for real (a write, a payment, a message): once
    /// untrusted text (a tool result, a resource) is in the session's
    /// context, each call needs the caller's confirmation, and is refused
    /// where no person can confirm. Injected instructions can steer the
    /// model, but not the caller's "yes".
    #[serde(default)]
    pub sensitive: bool,
}

/// A token bucket per principal: `calls` calls, refilled evenly over
/// `per_secs` seconds (so a burst of `calls` is allowed, then one call per
/// `per_secs / calls`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// One tool (`server__tool`)...
    pub tool: Option<String>,
    /// ...or all of one server's tools together; exactly one is given.
    pub server: Option<String>,
    pub calls: NonZeroU32,
    pub per_secs: u64,
}

/// Why the keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("[auth] keys_env: the environment variable {0} is not set or empty; set it to `key:principal:role,...`")]
    Unset(String),
    #[error(
        "[auth] keys_env {env}: entry {index} is not `key:principal:role` (keys are not shown)"
    )]
    Malformed { env: String, index: usize },
}

/// Known keys, by digest.
#[derive(Clone)]
pub struct Keyring {
    entries: Vec<([u8; 32], Caller)>,
}

/// By hand: digests are not for logs either.
impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.entries.len())
            .finish()
    }
}

impl Keyring {
    /// The keys named by `[auth]`.
    ///
    /// # Errors
    /// The variable is unset or an entry is malformed.
    pub fn from_env(spec: &AuthSpec) -> Result<Self, KeyringError> {
        let text = std::env::var(&spec.keys_env).unwrap_or_default();
        if text.trim().is_empty() {
            return Err(KeyringError::Unset(spec.keys_env.clone()));
        }
        Self::parse(&text, &spec.keys_env)
    }

    /// `key:principal:role` entries separated by commas (a key may not
    /// contain `:` or `,`). `env` names the source in errors.
    ///
    /// # Errors
    /// An entry without three non-empty parts.
    pub fn parse(text: &str, env: &str) -> Result<Self, KeyringError> {
        let mut entries = Vec::new();
        for (i, entry) in text.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let parts: Vec<&str> = entry.split(':').map(str::trim).collect();
            let [key, principal, role] = parts[..] else {
                return Err(KeyringError::Malformed {
                    env: env.into(),
                    index: i + 1,
                });
            };
            if key.is_empty() || principal.is_empty() || role.is_empty() {
                return Err(KeyringError::Malformed {
                    env: env.into(),
                    index: i + 1,
                });
            }
            entries.push((
                digest(key),
                Caller {
                    principal: principal.into(),
                    role: role.into(),
                    session: None,
                },
            ));
        }
        Ok(Self { entries })
    }

    /// The caller a key belongs to. Every entry is compared (no early
    /// exit), each in constant time.
    pub fn authenticate(&self, key: &str) -> Option<Caller> {
        let presented = digest(key);
        let mut found = None;
        for (known, caller) in &self.entries {
            if constant_time_eq(known, &presented) && found.is_none() {
                found = Some(caller.clone());
            }
        }
        found
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box: keep the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_principals_and_roles() {
        let ring = Keyring::parse("k1:alice:admin, k2:bob:caller", "T").unwrap();
        let alice = ring.authenticate("k1").unwrap();
        assert_eq!(
            (alice.principal.as_str(), alice.role.as_str()),
            ("alice", "admin")
        );
        assert_eq!(ring.authenticate("k2").unwrap().principal, "bob");
        assert!(ring.authenticate("k3").is_none());
        assert!(ring.authenticate("").is_none());
    }

    #[test]
    fn malformed_entries_are_named_without_the_key() {
        let e = Keyring::parse("k1:alice:admin,secretkey:bob", "T").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("entry 2"), "{text}");
        assert!(!text.contains("secretkey"), "{text}");
    }
}
