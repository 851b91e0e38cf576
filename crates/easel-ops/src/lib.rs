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
