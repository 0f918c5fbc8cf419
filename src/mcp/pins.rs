//! The tool-pin lock file (`pipelines/NAME.mcp.lock`, written by
//! `parlor mcp trust`): for each server, each trusted tool's description
//! and input-schema hashes. A server that later changes a pinned tool's
//! description or schema (a "rug pull": approved as harmless, swapped for
//! poisoned text afterwards) no longer matches its pin, and the tool is
//! quarantined until it is trusted again.
//!
//! JSON, keys sorted, one file per spec: it is meant to be reviewed in a
//! diff and committed next to the spec. The description is kept beside its
//! hash so a reviewer sees what was approved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The format version written; others are refused rather than misread.
pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("tool lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tool lock {path}: not a parlor lock file: {reason} (fix: delete it and run `parlor mcp trust`)")]
    Bad { path: PathBuf, reason: String },
}

/// What was approved of one tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolPin {
    /// SHA-256 (hex) of the description's UTF-8 bytes ("" when none).
    pub description_sha256: String,
    /// SHA-256 (hex) of the input schema as canonical JSON (keys sorted).
    pub schema_sha256: String,
    /// The approved description, for reviewers; not compared.
    #[serde(default)]
    pub description: Option<String>,
}

impl ToolPin {
    pub fn of(description: Option<&str>, schema: &Value) -> Self {
        Self {
            description_sha256: sha256(description.unwrap_or("").as_bytes()),
            schema_sha256: sha256(canonical_json(schema).as_bytes()),
            description: description.map(str::to_string),
        }
    }

    /// The same definition (the hashes match).
    pub fn matches(&self, other: &ToolPin) -> bool {
        self.description_sha256 == other.description_sha256
            && self.schema_sha256 == other.schema_sha256
    }
}

/// One server's pins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerPins {
    /// The command line or URL trusted, for reviewers.
    pub target: String,
    pub tools: BTreeMap<String, ToolPin>,
}

/// The whole lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolLock {
    pub version: u32,
    pub servers: BTreeMap<String, ServerPins>,
}

impl Default for ToolLock {
    fn default() -> Self {
        Self {
            version: LOCK_VERSION,
            servers: BTreeMap::new(),
        }
    }
}

impl ToolLock {
    /// The lock at `path`, or `None` when there is none yet.
    ///
    /// # Errors
    /// An unreadable or malformed file (never treated as "no pins").
    pub fn load(path: &Path) -> Result<Option<Self>, PinError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PinError::Io {
                    path: path.into(),
                    source,
                })
            }
        };
        let lock: ToolLock = serde_json::from_str(&text).map_err(|e| PinError::Bad {
            path: path.into(),
            reason: e.to_string(),
        })?;
        if lock.version != LOCK_VERSION {
            return Err(PinError::Bad {
                path: path.into(),
                reason: format!(
                    "version {} (this parlor writes {LOCK_VERSION})",
                    lock.version
                ),
            });
        }
        Ok(Some(lock))
    }

    /// Writes the lock atomically (temp file, fsync, rename), so a crash
    /// never leaves half a lock that would quarantine everything.
    ///
    /// # Errors
    /// The write or rename failing.
    pub fn save(&self, path: &Path) -> Result<(), PinError> {
        use std::io::Write as _;
        let io = |source| PinError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut text = serde_json::to_string_pretty(self).expect("serializable");
        text.push('\n');
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn pin(&self, server: &str, tool: &str) -> Option<&ToolPin> {
        self.servers.get(server)?.tools.get(tool)
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// JSON with object keys sorted at every level and no whitespace, so the
/// hash does not depend on the order a server happens to send keys in.
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String(k.clone()),
                        canonical_json(&map[k.as_str()])
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_hash_ignores_key_order_but_not_content() {
        let a = ToolPin::of(
            Some("d"),
            &json!({"type": "object", "properties": {"a": {}, "b": {}}}),
        );
        let b: Value =
            serde_json::from_str(r#"{"properties":{"b":{},"a":{}},"type":"object"}"#).unwrap();
        assert!(a.matches(&ToolPin::of(Some("d"), &b)));
        assert!(!a.matches(&ToolPin::of(Some("d "), &b)));
        assert!(!a.matches(&ToolPin::of(Some("d"), &json!({"type": "object"}))));
    }

    #[test]
    fn lock_round_trips_and_refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.mcp.lock");
        assert_eq!(ToolLock::load(&path).unwrap(), None);
        let mut lock = ToolLock::default();
        lock.servers
            .entry("s".into())
            .or_default()
            .tools
            .insert("t".into(), ToolPin::of(None, &json!({})));
        lock.save(&path).unwrap();
        assert_eq!(ToolLock::load(&path).unwrap(), Some(lock));
        std::fs::write(&path, r#"{"version": 9, "servers": {}}"#).unwrap();
        assert!(ToolLock::load(&path)
            .unwrap_err()
            .to_string()
            .contains("version 9"));
    }
}
