//! Easel's own tensor operations (a crate of their own so that dev and test builds optimise
//! them as they do the dependencies) where candle's are slow on the machines Easel runs on, as
//! candle custom ops with candle's own op as the fallback on other devices and dtypes. Each
//! is tested against candle's on odd shapes.

pub mod attention;
pub mod conv2d;
pub mod denormals;
pub mod group_norm;

use candle_core::{CpuStorage, Layout, Result};

pub use attention::attention;
pub use conv2d::{conv2d, Conv2d};
pub use group_norm::{group_norm, Activation, GroupNorm};

/// Runs `f` compiled for the widest vector instructions this CPU has (AVX-512, else AVX2 with
/// FMA, else the build's baseline): the crate is built for the baseline x86-64, whose loops
/// vectorise 4 floats wide. `f`'s loops must be inlined into it (`#[inline(always)]` helpers)
/// to take the wider instructions.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            #[allow(unsafe_code)]
            return unsafe { with_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            #[allow(unsafe_code)]
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The f32 values a contiguous operand of op `op` holds.
pub(crate) fn f32_slice<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [f32]> {
    let values = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("{op}: the operands must be contiguous"),
    }
}
