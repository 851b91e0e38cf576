//! Weights held in half precision and computed with in f32 on the CPU. candle's CPU products in
//! f16 are slow and its `to_dtype` widens element by element into a fresh tensor; Easel's
//! layers keep their matrices at the precision they were stored in (half the memory of f32)
//! and widen one layer's weights at a time into a reused buffer just before its product.

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, Device, Layout, Result};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

thread_local! {
    /// One layer's weights widened to f32, kept between calls so that no step pays for fresh
    /// pages. `release_buffers` empties it.
    static WIDENED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The dtype a layer whose weights are held at `weights` computes in on `device`: f32 on the
/// CPU, the weights' own elsewhere.
pub fn compute_dtype(device: &Device, weights: DType) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        weights
    }
}

/// A layer's `[outputs]` bias at the compute dtype, initialised as candle's layers do
/// (uniform within `1 / sqrt(inputs)`) when `vb` makes new weights.
pub(crate) fn load_bias(
    inputs: usize,
    outputs: usize,
    vb: &candle_nn::VarBuilder,
) -> Result<candle_core::Tensor> {
    let bound = 1. / (inputs as f64).sqrt();
    vb.get_with_hints_dtype(
        outputs,
        "bias",
        candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
        compute_dtype(vb.device(), vb.dtype()),
    )
}

/// Whether Easel's CPU kernels take weights held at `dtype`.
pub(crate) fn is_cpu_weights_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// Calls `with` on the f32 values of contiguous weights: in place when they are f32,
/// widened into the reused buffer when they are f16 or bf16.
fn with_f32_weights<R>(
    op: &str,
    storage: &CpuStorage,
    layout: &Layout,
    with: impl FnOnce(&[f32]) -> R,
) -> Result<R> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: the weights must be contiguous")
    };
    match storage {
        CpuStorage::F32(values) => Ok(with(&values[start..end])),
        CpuStorage::F16(values) => Ok(widened(&values[start..end], with)),
        CpuStorage::BF16(values) => Ok(widened(&values[start..end], with)),
        other => {
            use candle_core::backend::BackendStorage;
            candle_core::bail!("{op}: weights of dtype {:?}", other.dtype())
        }
    }
}

/// Values widened per task: large enough to amortise the task, small enough to spread.
const WIDEN_CHUNK: usize = 1 << 16;

/// `values` widened into the reused buffer, on every compute thread, and `with` called on them.
fn widened<H, R>(values: &[H], with: impl FnOnce(&[f32]) -> R) -> R
where
    H: Sync,
    [H]: HalfFloatSliceExt,
{
    WIDENED.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        if buffer.len() < values.len() {
            buffer.resize(values.len(), 0.0);
        }
        let widened = &mut buffer[..values.len()];
        widened
            .par_chunks_mut(WIDEN_CHUNK)
            .zip(values.par_chunks(WIDEN_CHUNK))
            .for_each(|(to, from)| from.convert_to_f32_slice(to));
        with(widened)
    })
}

/// Rounds f32 `from` to f16 into `to` (to nearest, ties to even, as candle's `to_dtype`), when
/// weights stored in f32 are held in 16 bits. Here so that it runs optimised in dev builds too:
/// `half`'s conversion is `#[inline]` and takes its caller's optimisation level.
pub fn narrow_to_f16(to: &mut [half::f16], from: &[f32]) {
    to.convert_from_f32_slice(from);
}

/// Rounds f32 `from` to bf16 into `to`, as `narrow_to_f16`.
pub fn narrow_to_bf16(to: &mut [half::bf16], from: &[f32]) {
    to.convert_from_f32_slice(from);
}

/// Values of half-precision weights widened whole and multiplied on every thread: a matrix this
/// small stays in the cache once widened, and blocks of a few rows would each pack the whole
/// input again (a 320 x 320 projection).
const WHOLE_FLOATS: usize = 1 << 20;

/// Values of half-precision weights widened per block in `for_each_row_block`, at most (16 MB a
/// thread in f32): a block stays in the core's L2 and L3 between its widening and its product,
/// and is tall enough for one thread's product to run near the parallel one's rate (FLUX's
/// [3072, 15360] output projection: blocks of 68 rows 273 ms, of 273 rows 207 ms, one parallel
/// product of the whole 186 ms).
const BLOCK_FLOATS: usize = 1 << 22;

/// Products of at most this many input rows split the weights' rows over the threads: gemm
/// multiplies so few rows (a matrix-vector product: a time embedding, FLUX's modulations) on
/// one thread.
const FEW_ROWS: usize = 8;

/// Calls `product(first_row, rows, parallelism)` over a layer's `row_len`-long weight rows in
/// f32, for a product with `input_rows` rows on the other side: once over all of them, the
/// product spread over the threads, when they are f32 (used in place) or 16-bit and few enough
/// to stay in the cache once widened (a 320 x 320 projection: blocks of a few rows would each
/// pack the whole input again); per block (`for_each_row_block`), each block's product on one
/// thread, when they are larger 16-bit weights or the input has `FEW_ROWS` rows or fewer.
pub(crate) fn for_each_f32_rows(
    op: &str,
    storage: &CpuStorage,
    layout: &Layout,
    row_len: usize,
    input_rows: usize,
    product: impl Fn(usize, &[f32], gemm::Parallelism) + Sync,
) -> Result<()> {
    let whole_fits_cache = layout.shape().elem_count() <= WHOLE_FLOATS;
    if input_rows <= FEW_ROWS || (is_half(storage) && !whole_fits_cache) {
        for_each_row_block(op, storage, layout, row_len, |first, block| {
            product(first, block, gemm::Parallelism::None)
        })
    } else {
        with_f32_weights(op, storage, layout, |weights| {
            product(0, weights, crate::parallelism())
        })
    }
}

/// Whether `storage` holds half-precision weights (f16, bf16), which the products widen a block
/// at a time, rather than f32 ones used in place.
fn is_half(storage: &CpuStorage) -> bool {
    matches!(storage, CpuStorage::F16(_) | CpuStorage::BF16(_))
}

/// Calls `with(first_row, rows)` for blocks of the `row_len`-long rows of contiguous weights,
/// the blocks spread over the threads: f32 ones in place; f16 or bf16 ones each widened to f32
/// in its thread's buffer just before, so that a layer's weights are read once at half width
/// and never written out whole in f32 (widening the whole matrix first cost SD's 16-bit UNet
/// 6% of its step).
fn for_each_row_block(
    op: &str,
    storage: &CpuStorage,
    layout: &Layout,
    row_len: usize,
    with: impl Fn(usize, &[f32]) + Sync,
) -> Result<()> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: the weights must be contiguous")
    };
    match storage {
        CpuStorage::F32(values) => {
            let values = &values[start..end];
            let rows_per_block = rows_per_block(values.len(), row_len);
            values
                .par_chunks(rows_per_block * row_len.max(1))
                .enumerate()
                .for_each(|(block, values)| with(block * rows_per_block, values));
        }
        CpuStorage::F16(values) => widen_blocks(&values[start..end], row_len, with),
        CpuStorage::BF16(values) => widen_blocks(&values[start..end], row_len, with),
        other => {
            use candle_core::backend::BackendStorage;
            candle_core::bail!("{op}: weights of dtype {:?} taken as half", other.dtype())
        }
    }
    Ok(())
}

/// Rows a block of `len` weights in `row_len`-long rows takes: within the cache's budget, and at
/// least two blocks a thread so that every thread works.
fn rows_per_block(len: usize, row_len: usize) -> usize {
    let row_len = row_len.max(1);
    (BLOCK_FLOATS / row_len)
        .min((len / row_len).div_ceil(2 * crate::threads().max(1)))
        .max(1)
}

fn widen_blocks<H>(values: &[H], row_len: usize, with: impl Fn(usize, &[f32]) + Sync)
where
    H: Sync,
    [H]: HalfFloatSliceExt,
{
    let rows_per_block = rows_per_block(values.len(), row_len);
    values
        .par_chunks(rows_per_block * row_len.max(1))
        .enumerate()
        .for_each(|(block, values)| {
            WIDENED.with(|buffer| {
                let mut buffer = buffer.borrow_mut();
                if buffer.len() < values.len() {
                    buffer.resize(values.len(), 0.0);
                }
                let widened = &mut buffer[..values.len()];
                values.convert_to_f32_slice(widened);
                with(block * rows_per_block, widened);
            });
        });
}

/// Frees this thread's reused buffers (the widened weights, the convolution's columns, the
/// attention's scores): called when models are unloaded, so that memory goes back with them.
pub fn release_buffers() {
    WIDENED.with(|buffer| *buffer.borrow_mut() = Vec::new());
    crate::conv2d::release_columns();
    crate::attention::release_scores();
    crate::winograd::release();
}
