//! Link settings for every binary, test and bench of the crate.
//!
//! whisper-rs-sys links whisper.cpp's ggml statically; llama-cpp-2 links
//! llama.cpp's (a different ggml version) as shared libraries, because two
//! static copies clash at link time (duplicate `ggml_*`/`gguf_*` symbols).
//! `--exclude-libs ALL` keeps the static copy out of the executable's
//! dynamic symbol table; otherwise libllama.so would bind to whisper's ggml
//! at run time instead of its own.
fn main() {
    println!("cargo:rustc-link-arg=-Wl,--exclude-libs,ALL");
}
