//! Link settings for every binary, test and bench of the crate.
//!
//! whisper-rs-sys links whisper.cpp's ggml statically; llama-cpp-2 links
//! llama.cpp's (a different ggml version) as shared libraries, because two
//! static copies clash at link time (duplicate `ggml_*`/`gguf_*` symbols).
//! `--exclude-libs ALL` keeps the static copy out of the executable's
//! dynamic symbol table; otherwise libllama.so would bind to whisper's ggml
//! at run time instead of its own.
//!
//! The shared libraries stay where llama-cpp-sys-2 built them (its copies
//! beside the binaries are dangling links), so every binary gets that
//! directory as its run path: `target/release/parlor` runs without
//! `LD_LIBRARY_PATH`. `--disable-new-dtags` writes RPATH rather than
//! RUNPATH, which also covers libllama's own dependencies (libggml*).
fn main() {
    println!("cargo:rustc-link-arg=-Wl,--exclude-libs,ALL");
    println!("cargo:rerun-if-env-changed=DEP_LLAMA_GGML_CMAKE_DIR");
    if let Some(lib_dir) = std::env::var_os("DEP_LLAMA_GGML_CMAKE_DIR")
        .map(std::path::PathBuf::from)
        .and_then(|cmake| cmake.parent().map(|p| p.to_path_buf()))
    {
        println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    }
}
