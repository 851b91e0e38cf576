//! Easel's own tensor operations (a crate of their own so that dev and test builds optimise
//! them as they do the dependencies) where candle's are slow on the machines Easel runs on, as
//! candle custom ops with candle's own op as the fallback on other devices and dtypes. Each
//! is tested against candle's on odd shapes.

mod addend;
pub mod attention;
pub mod conv2d;
pub mod denormals;
mod exp;
pub mod geglu;
pub mod gelu;
pub mod group_norm;
pub mod layer_norm;
pub mod linear;
pub mod op_times;
mod output;
pub mod weights;
mod winograd;

use candle_core::{CpuStorage, Layout, Result};

pub use addend::Addend;
pub use attention::{attention, attention_tokens};
pub use conv2d::{conv2d, conv2d_strided, Conv2d};
pub use geglu::geglu;
pub use gelu::gelu_tanh;
pub use group_norm::{group_norm, Activation, GroupNorm};
pub use layer_norm::{layer_norm, layer_norm_plain, rms_norm, LayerNorm};
pub use linear::{linear, linear_from_1x1_conv, linear_no_bias, Arrangement, Linear};
pub use weights::{compute_dtype, release_buffers};

/// Defines `fn $name(args) -> R` as `$generic(args)` compiled for the widest vector
/// instructions this CPU has (AVX-512, else AVX2 with FMA, else the build's baseline, whose
/// loops vectorise only 4 floats wide). `$generic` must be `#[inline(always)]`, with the
/// helpers its loops call, so that its loops are compiled inside each variant.
macro_rules! vectorized {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $generic:path) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn wide($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn narrow($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, AVX2 and FMA (every AVX-512 CPU has both).
                    #[allow(unsafe_code)]
                    return unsafe { wide($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA, checked just above.
                    #[allow(unsafe_code)]
                    return unsafe { narrow($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}
pub(crate) use vectorized;

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

/// The f32 values of a contiguous output of op `op`, to write in place.
pub(crate) fn f32_slice_mut<'a>(
    op: &str,
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> Result<&'a mut [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: the output must be contiguous")
    };
    match storage {
        CpuStorage::F32(values) => Ok(&mut values[start..end]),
        _ => candle_core::bail!("{op}: the output must be f32"),
    }
}

/// Threads the ops spread over: candle's thread count.
pub(crate) fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// How a large product spreads over the threads: candle's thread count.
pub(crate) fn parallelism() -> gemm::Parallelism {
    match threads() {
        0 | 1 => gemm::Parallelism::None,
        threads => gemm::Parallelism::Rayon(threads),
    }
}

/// What the ops' tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use candle_core::Tensor;

    /// The largest absolute difference between two tensors of one shape.
    pub(crate) fn largest_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("difference")
    }
}
