//! The prompt's system turn, kept on disk across processes.
//!
//! The in-process cache ([`super::local`]) spares every turn but the first
//! the system prompt and tool schemas: ~1,300 tokens, which the 1.5B model
//! evaluates in ~30 s on a slow two-core machine. The first turn after a
//! start (or the warm-up `parlor serve` runs before it takes calls) paid
//! them again on every start. This store keeps the keys and values of that
//! system turn in a file, written the first time a prompt's system turn is
//! evaluated and read back by the next process that meets the same turn
//! with the same model (the 0.5B model's first token: 7 s evaluating its
//! system turn, 0.6 s reading it; `tests/llm_local.rs`).
//!
//! A file is named by a hash of the model file (path, size, time), the
//! context length and the turn's tokens, and holds the tokens it was made
//! from, which are checked on load. A file llama.cpp refuses (another
//! llama.cpp version, cut short) is deleted and the turn is evaluated as
//! if it were not there: the file is read here and handed over as a
//! buffer, because llama.cpp's own file loader aborts the process on a
//! short file. Files are written under a name of their own and renamed,
//! so a reader never sees half a file, and only the most recently used
//! [`KEEP_FILES`] are kept (tens of MB each).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use llama_cpp_2::context::session::LlamaStateSeqFlags;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use sha2::{Digest, Sha256};

/// Files kept; the least recently used go first.
pub const KEEP_FILES: usize = 8;

/// A system turn shorter than this is evaluated faster than its file is
/// written and read.
pub const MIN_TOKENS: usize = 256;

/// Bumped when what a file means changes.
const FORMAT: &str = "parlor-prefix-kv-1";

/// A file: this, the token count (u32 LE), the tokens (i32 LE), then
/// llama.cpp's state of sequence 0 to the end.
const MAGIC: &[u8; 8] = b"PARLORKV";

/// The store's directory unless told otherwise: `$PARLOR_CACHE/prompt-kv`,
/// else `~/.cache/parlor/prompt-kv` (beside the models `models/setup.sh`
/// fetches). `None` with neither variable set.
pub fn default_dir() -> Option<PathBuf> {
    let cache = std::env::var_os("PARLOR_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/parlor")))?;
    Some(cache.join("prompt-kv"))
}

/// One model's view of the store.
#[derive(Debug, Clone)]
pub struct PrefixStore {
    dir: PathBuf,
    /// Hashed into every file name: the model file and the context it is
    /// loaded with.
    model_key: Vec<u8>,
    /// The token that closes a ChatML turn (`<|im_end|>`): the system turn
    /// is everything up to and including the first.
    end_of_turn: LlamaToken,
}

impl PrefixStore {
    /// The store in `dir` for `model` loaded from `path` with a context of
    /// `context_len` tokens; `None` if the model has no single
    /// `<|im_end|>` token (not a ChatML model) or its file cannot be read.
    pub fn new(dir: PathBuf, model: &LlamaModel, path: &Path, context_len: u32) -> Option<Self> {
        let end = model.vocab().tokenize(b"<|im_end|>", false, true);
        let [end_of_turn] = end[..] else {
            return None;
        };
        let meta = std::fs::metadata(path).ok()?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .unwrap_or_default();
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let model_key = format!(
            "{FORMAT}\n{}\n{}\n{}\n{context_len}\n",
            canonical.display(),
            meta.len(),
            modified.as_nanos()
        )
        .into_bytes();
        Some(Self {
            dir,
            model_key,
            end_of_turn,
        })
    }

    /// The system turn at the front of `prompt`, if it is worth storing
    /// and something follows it (the last prompt token must be evaluated
    /// for its logits).
    pub fn head<'a>(&self, prompt: &'a [LlamaToken]) -> Option<&'a [LlamaToken]> {
        let end = prompt.iter().position(|&t| t == self.end_of_turn)? + 1;
        (end >= MIN_TOKENS && end < prompt.len()).then(|| &prompt[..end])
    }

    /// The file for `head`.
    pub fn path(&self, head: &[LlamaToken]) -> PathBuf {
        let mut hash = Sha256::new();
        hash.update(&self.model_key);
        for token in head {
            hash.update(token.0.to_le_bytes());
        }
        let name = hex::encode(&hash.finalize()[..16]);
        self.dir.join(format!("{name}.kv"))
    }

    /// Load `head`'s keys and values into `ctx`'s sequence 0, which must be
    /// empty. `Ok(false)`: no file. An error leaves the sequence in an
    /// unknown state and the file deleted.
    pub fn load(
        &self,
        ctx: &mut LlamaContext<'_>,
        path: &Path,
        head: &[LlamaToken],
    ) -> Result<bool, String> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.to_string()),
        };
        let restored = split(&bytes, head).and_then(|state| {
            // SAFETY: llama.cpp reads the state through a bounds-checked
            // buffer reader and answers a short or foreign state with 0, not
            // a read past `state` (its file loader, by contrast, asserts and
            // aborts the process on a truncated file, which is why the file
            // is read here).
            let taken =
                unsafe { ctx.state_seq_set_data_ext(state, 0, LlamaStateSeqFlags::empty()) };
            taken
                .then_some(())
                .ok_or_else(|| "llama.cpp refused the state in it".to_string())
        });
        match restored {
            Ok(()) => {
                // Most recently used: the last to be pruned.
                let _ = std::fs::File::options()
                    .append(true)
                    .open(path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                Ok(true)
            }
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Write sequence 0 of `ctx`, which holds exactly `head`, to `path`,
    /// then drop the least recently used files beyond [`KEEP_FILES`].
    pub fn save(
        &self,
        ctx: &LlamaContext<'_>,
        path: &Path,
        head: &[LlamaToken],
    ) -> Result<(), String> {
        let flags = LlamaStateSeqFlags::empty();
        let size = ctx.state_seq_get_size_ext(0, flags);
        let mut file = Vec::with_capacity(MAGIC.len() + 4 + head.len() * 4 + size);
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&(head.len() as u32).to_le_bytes());
        for token in head {
            file.extend_from_slice(&token.0.to_le_bytes());
        }
        // The state goes straight into the file's buffer (tens of MB).
        let state_at = file.len();
        file.resize(state_at + size, 0);
        // SAFETY: the buffer has the `size` bytes llama.cpp just said the
        // sequence's state takes from `state_at` on; nothing changes the
        // context in between (`&LlamaContext`, and the caller holds the
        // planner's lock).
        let written =
            unsafe { ctx.state_seq_get_data_ext(file[state_at..].as_mut_ptr(), 0, flags) };
        if written != size {
            return Err(format!("llama.cpp wrote {written} of {size} state bytes"));
        }

        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        // A name of its own per write, also between two contexts of one
        // process, so a file is renamed into place only when whole.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let partial = path.with_extension(format!(
            "{}-{}.partial",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        let written =
            std::fs::write(&partial, &file).and_then(|()| std::fs::rename(&partial, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&partial);
            return Err(e.to_string());
        }
        self.prune();
        Ok(())
    }

    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "kv"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        for (_, old) in files.into_iter().skip(KEEP_FILES) {
            let _ = std::fs::remove_file(old);
        }
    }
}

/// The state in a stored file, if the file is whole and made from `head`.
fn split<'a>(file: &'a [u8], head: &[LlamaToken]) -> Result<&'a [u8], String> {
    let rest = file
        .strip_prefix(MAGIC.as_slice())
        .ok_or("it is not a parlor prefix file")?;
    let (count, rest) = rest.split_first_chunk::<4>().ok_or("it is cut short")?;
    let count = u32::from_le_bytes(*count) as usize;
    let tokens_len = count.checked_mul(4).ok_or("its token count is absurd")?;
    if rest.len() < tokens_len {
        return Err("it is cut short".into());
    }
    let (tokens, state) = rest.split_at(tokens_len);
    let same = count == head.len()
        && tokens
            .chunks_exact(4)
            .zip(head)
            .all(|(b, t)| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) == t.0);
    if !same {
        return Err("it holds other tokens".into());
    }
    Ok(state)
}
