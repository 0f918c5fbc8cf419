//! Rewriting a GGUF model in another quantization, once, at set-up.
//!
//! Why: Qwen2.5 0.5B's rows are 896 wide, not a multiple of the 256 that
//! K-quants need, so its "Q4_K_M" file is mostly q5_0. llama.cpp has
//! repacked (8x8, AVX2) CPU kernels for q4_0, IQ4_NL and q4_K but none for
//! q5_0, so the 0.5B ran on the slow path. Rewritten as IQ4_NL it generates
//! about 28 % more tokens a second with the same tool choices (README,
//! "Benchmarks"; `cargo bench --bench llm` with `PARLOR_BENCH_MODEL`).
//! `bash models/setup.sh` does this through `parlor requantize`.

use std::ffi::CString;
use std::path::Path;

use super::LlmError;

/// A quantization to rewrite a model in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantization {
    /// 4.5 bits a weight, non-linear levels: close to q5_0's answers.
    Iq4Nl,
    /// 4.5 bits a weight, linear levels: a little faster, a little worse.
    Q4_0,
    /// 8.5 bits a weight: near lossless, no faster to generate.
    Q8_0,
}

impl Quantization {
    /// llama.cpp's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Iq4Nl => "IQ4_NL",
            Self::Q4_0 => "Q4_0",
            Self::Q8_0 => "Q8_0",
        }
    }

    fn ftype(self) -> llama_cpp_sys_2::llama_ftype {
        match self {
            Self::Iq4Nl => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_IQ4_NL,
            Self::Q4_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_0,
            Self::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0,
        }
    }
}

/// Writes `source` re-quantized as `quantization` to `target`, through a
/// temporary file beside it, so `target` is either whole or absent.
/// llama.cpp keeps what it cannot re-quantize (norms stay f32, a row width
/// a type cannot hold falls back to q8_0).
pub fn requantize(
    source: &Path,
    target: &Path,
    quantization: Quantization,
    threads: usize,
) -> Result<(), LlmError> {
    if !source.is_file() {
        return Err(LlmError::ModelMissing(source.to_path_buf()));
    }
    // llama.cpp's progress lines go to tracing, like the loader's.
    super::local::backend()?;
    let partial = target.with_extension("gguf.partial");
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| LlmError::Load {
            path: p.to_path_buf(),
            message: "the path holds a NUL byte".into(),
        })
    };
    let (input, output) = (c_path(source)?, c_path(&partial)?);
    // SAFETY: the default parameters are plain values; the two paths are
    // NUL-terminated and outlive the call, and every pointer field the
    // defaults leave null (imatrix, overrides) stays null.
    let status = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.ftype = quantization.ftype();
        params.allow_requantize = true;
        params.nthread = i32::try_from(threads.max(1)).unwrap_or(1);
        llama_cpp_sys_2::llama_model_quantize(input.as_ptr(), output.as_ptr(), &params)
    };
    if status != 0 {
        let _ = std::fs::remove_file(&partial);
        return Err(LlmError::Load {
            path: source.to_path_buf(),
            message: format!("llama.cpp could not re-quantize it (status {status})"),
        });
    }
    std::fs::rename(&partial, target).map_err(|e| LlmError::Load {
        path: target.to_path_buf(),
        message: format!("cannot move the re-quantized file into place: {e}"),
    })
}
