//! Where parlor keeps a person's OAuth refresh token for a remote MCP server
//! between runs (`[mcp.NAME.oauth] grant = "authorization_code"`).
//!
//! One file per server, `NAME.json` in `$PARLOR_CREDENTIALS` (default
//! `~/.config/parlor/credentials`), readable by the owner only. The file
//! names the server URL and client it was issued for, and a token is handed
//! only to the server it names, so servers never see each other's
//! credentials, and a spec that points a name at another URL starts over
//! with a sign-in instead of sending the old token there.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The file's contents. Not `Debug`: it holds the token.
#[derive(Serialize, Deserialize)]
struct Stored {
    server_url: String,
    client_id: String,
    refresh_token: String,
}

/// One server's credential file.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    path: PathBuf,
}

impl CredentialStore {
    /// The store of server `name` in the default directory.
    ///
    /// # Errors
    /// A name that is not a plain file name, or no home directory.
    pub fn for_server(name: &str) -> Result<Self, String> {
        let dir = match std::env::var_os("PARLOR_CREDENTIALS") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
                .ok_or("neither PARLOR_CREDENTIALS nor HOME is set")?
                .join("parlor/credentials"),
        };
        Self::in_dir(&dir, name)
    }

    /// The store of server `name` in `dir`.
    ///
    /// # Errors
    /// A name that is not a plain file name.
    pub fn in_dir(dir: &Path, name: &str) -> Result<Self, String> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "server name {name:?} cannot name a credential file (letters, digits, - and _)"
            ));
        }
        Ok(Self {
            path: dir.join(format!("{name}.json")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The refresh token saved for `server_url` and `client_id`; `None` when
    /// there is none or it was issued for another server or client.
    ///
    /// # Errors
    /// A file that exists but cannot be read or parsed.
    pub fn load(&self, server_url: &str, client_id: &str) -> Result<Option<SecretString>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        // serde_json's message for a bad file quotes no token.
        let stored: Stored = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a credential file: {e}", self.path.display()))?;
        Ok(
            (stored.server_url == server_url && stored.client_id == client_id)
                .then(|| SecretString::from(stored.refresh_token)),
        )
    }

    /// Saves `refresh_token` for `server_url` and `client_id`, replacing the
    /// file atomically (a crash leaves the old token or the new, never half)
    /// with owner-only permissions from the start.
    ///
    /// # Errors
    /// The directory or file cannot be written.
    pub fn save(
        &self,
        server_url: &str,
        client_id: &str,
        refresh_token: &SecretString,
    ) -> Result<(), String> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let fail = |e: std::io::Error| format!("{}: {e}", self.path.display());
        private_dir(dir).map_err(fail)?;
        let text = serde_json::to_string(&Stored {
            server_url: server_url.into(),
            client_id: client_id.into(),
            refresh_token: refresh_token.expose_secret().into(),
        })
        .expect("strings serialise");
        let temp = self.path.with_extension("json.tmp");
        let mut file = private_file(&temp).map_err(fail)?;
        file.write_all(text.as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&temp, &self.path).map_err(fail)
    }
}

#[cfg(unix)]
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_kept_for_its_own_server_and_client_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::in_dir(&dir.path().join("creds"), "kb").unwrap();
        assert!(store.load("http://a/mcp", "cli").unwrap().is_none());
        store
            .save("http://a/mcp", "cli", &SecretString::from("rt-1"))
            .unwrap();
        let got = store.load("http://a/mcp", "cli").unwrap().unwrap();
        assert_eq!(got.expose_secret(), "rt-1");
        assert!(store.load("http://b/mcp", "cli").unwrap().is_none());
        assert!(store.load("http://a/mcp", "other").unwrap().is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(store.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        for bad in ["../kb", "a/b", "", "kb.json"] {
            assert!(
                CredentialStore::in_dir(Path::new("/tmp"), bad).is_err(),
                "{bad}"
            );
        }
    }
}
