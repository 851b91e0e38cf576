//! Attention without its score matrix: `softmax(q kᵀ · scale) v` computed a block of query
//! rows at a time, on the CPU in f32. Each block's scores (`keys x rows`, query-major) live in
//! a small reused buffer, the softmax takes them in base 2 (the scale times `log2 e` folded
//! into the first product, a vectorisable `2^x`), and both products are `gemm` calls, one head
//! of one block a task, the tasks spread over the threads. Heads are read where they
//! lie, `[B, H, L, D]` or the linear layers' `[B, L, H * D]` tokens (`attention_tokens`), so
//! a transformer needs no transposed copies around it. The materialised form holds
//! `heads x queries x keys` scores and again as many probabilities (two 3 GB matrices for
//! FLUX.2 at 512x512 with four references).
//!
//! On Metal, candle's fused kernel runs it (heads zero-padded to a width it takes); other
//! devices and dtypes take the materialised form through candle.

use std::cell::RefCell;

use super::f32_slice;
use crate::exp::exp2;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Most query rows per block: larger blocks pay the products' packing and calls less often
/// (SD 1.5's 4096-token self-attention: 64 rows 260 ms, 128 239, 256 226, 512 223).
const BLOCK_ROWS: usize = 256;

thread_local! {
    /// One block's scores, kept between calls so that no step pays for fresh pages.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The keys and values of the head this thread works on, gathered out of tokens holding
    /// several heads, and which call, sequence and head they are.
    static HEAD: RefCell<GatheredHead> = const { RefCell::new(GatheredHead::EMPTY) };
}

/// Numbers the op's calls, so that a thread's gathered head is never taken for another call's.
static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One head's keys and values, `[keys, width]` each.
struct GatheredHead {
    /// Call, sequence and head.
    of: (usize, usize, usize),
    k: Vec<f32>,
    v: Vec<f32>,
}

impl GatheredHead {
    const EMPTY: Self = Self {
        of: (usize::MAX, 0, 0),
        k: Vec::new(),
        v: Vec::new(),
    };
}

/// Frees this thread's score and head buffers.
pub(crate) fn release_scores() {
    SCORES.with(|scores| *scores.borrow_mut() = Vec::new());
    HEAD.with(|head| *head.borrow_mut() = GatheredHead::EMPTY);
}

/// `softmax(q kᵀ · scale) v` for `q` `[B, H, Lq, D]`, `k` and `v` `[B, H, Lk, D]`: `[B, H, Lq, D]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    crate::op_times::timed(
        || format!("attention {:?} x {:?}", q.dims(), k.dims()),
        || attention_untimed(q, k, v, scale),
    )
}

/// `attention` on tokens as linear layers give them: `q` `[B, Lq, H * D]`, `k` and `v`
/// `[B, Lk, H * D]`, `heads` heads of `D` side by side in each token: `[B, Lq, H * D]`. On the
/// CPU the heads are read and written where they lie, with no transposed copies.
pub fn attention_tokens(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    crate::op_times::timed(
        || format!("attention {heads} heads {:?} x {:?}", q.dims(), k.dims()),
        || {
            if own_kernel_runs(&[q, k, v], 3) {
                return q.contiguous()?.apply_op3_no_bwd(
                    &k.contiguous()?,
                    &v.contiguous()?,
                    &AttentionOp {
                        scale,
                        layout: HeadLayout::Tokens { heads },
                    },
                );
            }
            let (batch, queries, channels) = q.dims3()?;
            if heads == 0 || !channels.is_multiple_of(heads) {
                candle_core::bail!("attention: {channels} channels in {heads} heads")
            }
            let split = |t: &Tensor| -> Result<Tensor> {
                let len = t.dim(1)?;
                t.reshape((batch, len, heads, channels / heads))?
                    .transpose(1, 2)
            };
            attention_untimed(&split(q)?, &split(k)?, &split(v)?, scale)?
                .transpose(1, 2)?
                .reshape((batch, queries, channels))
        },
    )
}

/// Whether Easel's CPU kernel takes these operands: f32 on the CPU, of rank `rank`.
fn own_kernel_runs(operands: &[&Tensor], rank: usize) -> bool {
    operands
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() == rank)
}

fn attention_untimed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if own_kernel_runs(&[q, k, v], 4) {
        return q.contiguous()?.apply_op3_no_bwd(
            &k.contiguous()?,
            &v.contiguous()?,
            &AttentionOp {
                scale,
                layout: HeadLayout::Heads,
            },
        );
    }
    if q.device().is_metal() {
        return metal_attention(q, k, v, scale);
    }
    let scores = (q.matmul(&k.t()?)? * scale)?;
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
}

/// Head widths candle's fused Metal attention (`candle_nn::ops::sdpa`) takes.
const METAL_HEAD_DIMS: [usize; 7] = [32, 64, 72, 80, 96, 128, 256];

/// The fused kernel's head width for heads of `width`: the smallest it takes that holds them.
fn metal_head_dim(width: usize) -> Option<usize> {
    METAL_HEAD_DIMS.iter().copied().find(|&dim| dim >= width)
}

/// On Metal, candle's fused attention, the heads zero-padded to a width it takes (exact: the
/// zeros add nothing to `q kᵀ`, and the output's padding columns are cut off); wider heads
/// take the materialised form.
fn metal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let width = q.dim(candle_core::D::Minus1)?;
    let Some(padded) = metal_head_dim(width) else {
        let scores = (q.matmul(&k.t()?)? * scale)?;
        return candle_nn::ops::softmax_last_dim(&scores)?.matmul(v);
    };
    let [q, k, v] = [q, k, v].map(|t| pad_heads(t, padded));
    let out = candle_nn::ops::sdpa(&q?, &k?, &v?, None, false, scale as f32, 1.0)?;
    out.narrow(candle_core::D::Minus1, 0, width)
}

/// `t` `[.., width]` with zero columns up to `padded`, contiguous.
fn pad_heads(t: &Tensor, padded: usize) -> Result<Tensor> {
    let width = t.dim(candle_core::D::Minus1)?;
    if width == padded {
        return t.contiguous();
    }
    t.pad_with_zeros(candle_core::D::Minus1, 0, padded - width)?
        .contiguous()
}

/// Where each head's rows lie.
#[derive(Clone, Copy)]
enum HeadLayout {
    /// `[B, H, L, D]`: each head's rows contiguous.
    Heads,
    /// `[B, L, H * D]`: a token's heads side by side.
    Tokens { heads: usize },
}

struct AttentionOp {
    scale: f64,
    layout: HeadLayout,
}

/// Sizes of one attention, as sequences of tokens each holding `heads` heads of `width`
/// (`[B, H, L, D]` is `B * H` sequences of one head).
#[derive(Clone, Copy)]
struct Sizes {
    heads: usize,
    width: usize,
    queries: usize,
    keys: usize,
}

impl Sizes {
    /// Values of one token: the row stride.
    fn channels(&self) -> usize {
        self.heads * self.width
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "easel-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q_dims, k_dims, v_dims) = (
            q_layout.shape().dims(),
            k_layout.shape().dims(),
            v_layout.shape().dims(),
        );
        let fits = k_dims == v_dims
            && q_dims.len() == k_dims.len()
            && q_dims[..q_dims.len() - 2] == k_dims[..k_dims.len() - 2]
            && q_dims.last() == k_dims.last();
        if !fits {
            candle_core::bail!("attention: q {q_dims:?}, k {k_dims:?}, v {v_dims:?} do not fit")
        }
        let (sequences, sizes) = match self.layout {
            HeadLayout::Heads => {
                let (batch, heads, queries, width) = q_layout.shape().dims4()?;
                let keys = k_dims[2];
                let sizes = Sizes {
                    heads: 1,
                    width,
                    queries,
                    keys,
                };
                (batch * heads, sizes)
            }
            HeadLayout::Tokens { heads } => {
                let (batch, queries, channels) = q_layout.shape().dims3()?;
                if heads == 0 || !channels.is_multiple_of(heads) {
                    candle_core::bail!("attention: {channels} channels in {heads} heads")
                }
                let sizes = Sizes {
                    heads,
                    width: channels / heads,
                    queries,
                    keys: k_dims[1],
                };
                (batch, sizes)
            }
        };
        let q = f32_slice("attention", q, q_layout)?;
        let k = f32_slice("attention", k, k_layout)?;
        let v = f32_slice("attention", v, v_layout)?;
        let scale = self.scale as f32;
        let channels = sizes.channels();
        let mut out = crate::output::zeros(q.len());
        if channels > 0 && sizes.queries > 0 {
            // Tasks of one head of one block of query rows, in the order sequence, head, block:
            // the threads take runs of tasks, so that a thread's consecutive tasks read the
            // same head's keys and values (kept in its cache) and enough tasks that every
            // thread has several.
            let wanted_tasks = 4 * crate::threads().max(1);
            let rows = (sequences * sizes.heads * sizes.queries)
                .div_ceil(wanted_tasks)
                .clamp(16, BLOCK_ROWS);
            let blocks = sizes.queries.div_ceil(rows);
            let sequence_len = sizes.queries * channels;
            let keys_len = sizes.keys * channels;
            let out_at = out.as_mut_ptr() as usize;
            let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (0..sequences * sizes.heads * blocks)
                .into_par_iter()
                .for_each(|task| {
                    let (sequence, head, block) = (
                        task / (sizes.heads * blocks),
                        task / blocks % sizes.heads,
                        task % blocks,
                    );
                    let first_row = block * rows;
                    let count = rows.min(sizes.queries - first_row);
                    let first = sequence * sequence_len + first_row * channels;
                    let column = head * sizes.width;
                    let in_tokens = |data| HeadRows {
                        data,
                        stride: channels,
                        column,
                    };
                    let q = in_tokens(&q[first..first + count * channels]);
                    let mut out = OutRows {
                        at: out_at + (first + column) * std::mem::size_of::<f32>(),
                        stride: channels,
                    };
                    let k = &k[sequence * keys_len..(sequence + 1) * keys_len];
                    let v = &v[sequence * keys_len..(sequence + 1) * keys_len];
                    if sizes.heads == 1 {
                        return attend_block(
                            q,
                            in_tokens(k),
                            in_tokens(v),
                            &mut out,
                            &sizes,
                            scale,
                        );
                    }
                    // Several heads a token: the head's keys and values gathered into rows of
                    // their own once per run of its tasks (read in place, each row a separate
                    // short run, they cost the products 9% more).
                    HEAD.with(|gathered| {
                        let mut gathered = gathered.borrow_mut();
                        if gathered.of != (call, sequence, head) {
                            let GatheredHead {
                                k: own_k, v: own_v, ..
                            } = &mut *gathered;
                            gather_head(k, &sizes, column, own_k);
                            gather_head(v, &sizes, column, own_v);
                            gathered.of = (call, sequence, head);
                        }
                        let own = |data| HeadRows {
                            data,
                            stride: sizes.width,
                            column: 0,
                        };
                        attend_block(
                            q,
                            own(&gathered.k),
                            own(&gathered.v),
                            &mut out,
                            &sizes,
                            scale,
                        );
                    });
                });
        }
        Ok((CpuStorage::F32(out), q_layout.shape().clone()))
    }
}

/// Rows of one head: row `r`'s values start at `data[r * stride + column]`.
#[derive(Clone, Copy)]
struct HeadRows<'a> {
    data: &'a [f32],
    stride: usize,
    column: usize,
}

impl HeadRows<'_> {
    fn as_ptr(&self) -> *const f32 {
        self.data[self.column..].as_ptr()
    }

    /// Where row `row` starts (it must be one of the rows).
    fn row_ptr(&self, row: usize) -> *const f32 {
        self.data[row * self.stride + self.column..].as_ptr()
    }
}

/// Where a task writes its rows of one head: row `r` at address `at + r * stride` floats, in
/// the op's output, which no other task writes.
struct OutRows {
    at: usize,
    stride: usize,
}

impl OutRows {
    /// The first `width` values of row `row`.
    fn row(&mut self, row: usize, width: usize) -> &mut [f32] {
        // SAFETY: row `row` of the task's output rows (see `OutRows`): `width` values that
        // this task alone writes, inside the op's output; borrowing `self` mutably keeps any
        // other view of them from this task away while this one lives.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut((self.at as *mut f32).add(row * self.stride), width)
        }
    }
}

/// `width` values of the head at `column` of each of the `keys` token rows of `tokens`,
/// into `into` as `[keys, width]`.
fn gather_head(tokens: &[f32], sizes: &Sizes, column: usize, into: &mut Vec<f32>) {
    into.clear();
    for token in tokens.chunks_exact(sizes.channels()) {
        into.extend_from_slice(&token[column..column + sizes.width]);
    }
}

/// One head of a block of query rows `q` against every key `k` and value `v` (each of
/// `sizes.width` values a row): the head's output rows, written at `out`. Keys go in blocks of
/// `KEY_BLOCK` whose scores stay in the core's cache: each block's exponentials are taken
/// against the running maximum of their row, the rows' sums and the output so far carried over
/// when the maximum rises (the online softmax), and the output divided by the sums at the end.
///
/// Scores and the output so far are kept query-major (`[key][row]`, `[column][row]`): the
/// products' kernels then run along the query rows (64 at a time) rather than along a head's
/// 40 values (a third of their lanes idle), and the softmax's maxima and sums are taken down
/// columns of rows, lane by lane.
fn attend_block(
    q: HeadRows,
    k: HeadRows,
    v: HeadRows,
    out: &mut OutRows,
    sizes: &Sizes,
    scale: f32,
) {
    let (width, keys) = (sizes.width, sizes.keys);
    let rows = (q.data.len() - q.column).div_ceil(q.stride.max(1));
    let key_block = KEY_BLOCK.min(keys.max(1));
    SCORES.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.len() < rows * (key_block + width) {
            scratch.resize(rows * (key_block + width), 0.0);
        }
        let (scores, out_so_far) = scratch.split_at_mut(rows * key_block);
        let out_so_far = &mut out_so_far[..rows * width];
        let mut state = RowsState::new(rows);
        let mut first_key = 0;
        while first_key < keys {
            let block = key_block.min(keys - first_key);
            let scores = &mut scores[..rows * block];
            let (k_at, v_at) = (k.row_ptr(first_key), v.row_ptr(first_key));
            // gemm takes raw pointers and strides.
            // SAFETY: `scores` is `[block][rows]` and `out_so_far` `[width][rows]` (row stride
            // 1); `q` holds `rows` rows and `k` and `v` at least `first_key + block` rows of
            // `width` values at their strides (`row_ptr` points at row `first_key`), all in
            // bounds; `k` is read transposed (row stride 1, column stride its row stride).
            #[allow(unsafe_code)]
            unsafe {
                gemm::gemm(
                    rows,
                    block,
                    width,
                    scores.as_mut_ptr(),
                    rows as isize,
                    1,
                    false,
                    q.as_ptr(),
                    1,
                    q.stride as isize,
                    k_at,
                    k.stride as isize,
                    1,
                    0.0,
                    scale * std::f32::consts::LOG2_E,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            exp_columns(scores, rows, &mut state);
            let read_so_far = first_key > 0;
            if read_so_far {
                // The output so far carried to the rows' new maxima.
                carry_columns(out_so_far, &state.carries[..rows]);
            }
            #[allow(unsafe_code)]
            // SAFETY: as above; the output so far is read (and added to) only after the first
            // block wrote it.
            unsafe {
                gemm::gemm(
                    rows,
                    width,
                    block,
                    out_so_far.as_mut_ptr(),
                    rows as isize,
                    1,
                    read_so_far,
                    scores.as_ptr(),
                    rows as isize,
                    1,
                    v_at,
                    1,
                    v.stride as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            first_key += block;
        }
        for (row, &sum) in state.sums[..rows].iter().enumerate() {
            let inverse = 1.0 / sum;
            for (value, column) in out
                .row(row, width)
                .iter_mut()
                .zip(out_so_far.chunks_exact(rows))
            {
                *value = column[row] * inverse;
            }
        }
    });
}

/// Keys per block of scores: a block of `BLOCK_ROWS` rows (512 KB) stays in the core's cache
/// between the product that writes it, the exponentials and the product that reads it.
const KEY_BLOCK: usize = 512;

/// The online softmax's state for a block of query rows.
struct RowsState {
    /// Each row's largest score so far.
    maxima: [f32; BLOCK_ROWS],
    /// Each row's sum of exponentials so far, taken against its maximum.
    sums: [f32; BLOCK_ROWS],
    /// What each row's output so far must be multiplied by after the latest block raised its
    /// maximum (1 where it did not).
    carries: [f32; BLOCK_ROWS],
    /// The latest block's sum of exponentials of each row.
    block_sums: [f32; BLOCK_ROWS],
}

impl RowsState {
    fn new(rows: usize) -> Self {
        debug_assert!(rows <= BLOCK_ROWS);
        Self {
            maxima: [f32::NEG_INFINITY; BLOCK_ROWS],
            sums: [0.0; BLOCK_ROWS],
            carries: [1.0; BLOCK_ROWS],
            block_sums: [0.0; BLOCK_ROWS],
        }
    }
}

crate::vectorized! {
    /// Every score of `scores` (`[key][row]`, `rows` a key; in base 2: scaled by `log2 e`)
    /// replaced by `2^(x - max)` for `max` its row's maximum so far (this block's included),
    /// each row's sum carried to that maximum and added to: the softmax without its division,
    /// which is applied to the output's rows at the end (`width` values a row rather than
    /// `keys`).
    fn exp_columns(scores: &mut [f32], rows: usize, state: &mut RowsState) = exp_columns_generic
}

#[inline(always)]
fn exp_columns_generic(scores: &mut [f32], rows: usize, state: &mut RowsState) {
    let RowsState {
        maxima,
        sums,
        carries,
        block_sums,
    } = state;
    let (maxima, sums, carries, block_sums) = (
        &mut maxima[..rows],
        &mut sums[..rows],
        &mut carries[..rows],
        &mut block_sums[..rows],
    );
    // The new maxima, kept in `block_sums` until the carries are taken.
    block_sums.copy_from_slice(maxima);
    for key in scores.chunks_exact(rows) {
        for (max, &score) in block_sums.iter_mut().zip(key) {
            *max = if score > *max { score } else { *max };
        }
    }
    for ((carry, max), new_max) in carries.iter_mut().zip(maxima.iter_mut()).zip(&*block_sums) {
        // 2^-inf is taken as 2^-126 (about 1e-38): times a sum of 0 it is still 0.
        *carry = exp2(*max - new_max);
        *max = *new_max;
    }
    block_sums.fill(0.0);
    for key in scores.chunks_exact_mut(rows) {
        for ((score, sum), &max) in key.iter_mut().zip(block_sums.iter_mut()).zip(&*maxima) {
            *score = exp2(*score - max);
            *sum += *score;
        }
    }
    for ((sum, carry), block_sum) in sums.iter_mut().zip(&*carries).zip(&*block_sums) {
        *sum = *sum * carry + block_sum;
    }
}

crate::vectorized! {
    /// Each column of `columns` (`carries.len()` values, one a row) multiplied by the rows'
    /// carries.
    fn carry_columns(columns: &mut [f32], carries: &[f32]) = carry_columns_generic
}

#[inline(always)]
fn carry_columns_generic(columns: &mut [f32], carries: &[f32]) {
    for column in columns.chunks_exact_mut(carries.len()) {
        for (value, carry) in column.iter_mut().zip(carries) {
            *value *= carry;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::largest_difference;
    use candle_core::Device;

    /// `softmax(q kᵀ · scale) v` through candle's materialised ops.
    fn materialised(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        (q.matmul(&k.t().expect("t")).expect("scores") * scale)
            .and_then(|s| candle_nn::ops::softmax_last_dim(&s))
            .and_then(|p| p.matmul(v))
            .expect("materialised")
    }

    #[test]
    fn heads_zero_padded_for_the_metal_kernel_give_the_same_attention() {
        // What the Metal path computes, checked here with the CPU kernel: SD 1.5's 40-wide
        // heads padded to 64, the scale of the true width kept.
        assert_eq!(metal_head_dim(40), Some(64));
        assert_eq!(metal_head_dim(64), Some(64));
        assert_eq!(metal_head_dim(160), Some(256));
        assert_eq!(metal_head_dim(300), None);
        let device = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 2, 37, 40), &device).expect("q");
        let k = Tensor::randn(0f32, 1.0, (1, 2, 23, 40), &device).expect("k");
        let v = Tensor::randn(0f32, 1.0, (1, 2, 23, 40), &device).expect("v");
        let scale = 1.0 / 40f64.sqrt();
        let plain = attention(&q, &k, &v, scale).expect("plain");
        let [pq, pk, pv] = [&q, &k, &v].map(|t| pad_heads(t, 64).expect("pad"));
        let padded = attention(&pq, &pk, &pv, scale)
            .and_then(|out| out.narrow(candle_core::D::Minus1, 0, 40))
            .expect("padded");
        let difference = largest_difference(&plain, &padded);
        assert!(difference < 1e-6, "{difference}");
    }

    #[test]
    fn attention_matches_the_materialised_form_on_odd_shapes() {
        let device = Device::Cpu;
        for (batch, heads, queries, keys, width) in [
            (1, 1, 5, 7, 3),
            (2, 3, 37, 53, 24),
            (1, 2, 130, 129, 64),
            (1, 1, 1, 300, 8),
            // Several blocks of keys, the last one partial.
            (1, 2, 300, 2 * KEY_BLOCK + 77, 40),
        ] {
            let q = Tensor::randn(0f32, 1.0, (batch, heads, queries, width), &device).expect("q");
            let k = Tensor::randn(0f32, 1.0, (batch, heads, keys, width), &device).expect("k");
            let v = Tensor::randn(0f32, 1.0, (batch, heads, keys, width), &device).expect("v");
            let scale = 1.0 / (width as f64).sqrt();
            let ours = attention(&q, &k, &v, scale).expect("ours");
            let difference = largest_difference(&ours, &materialised(&q, &k, &v, scale));
            assert!(
                difference < 1e-5,
                "{batch}x{heads}x{queries}x{keys}x{width}: {difference}"
            );
        }
    }

    #[test]
    fn a_later_block_of_keys_raising_the_maximum_carries_the_sums_and_output_over() {
        let device = Device::Cpu;
        let (queries, keys, width) = (20, 3 * KEY_BLOCK, 16);
        let q = Tensor::randn(0f32, 1.0, (1, 1, queries, width), &device).expect("q");
        let v = Tensor::randn(0f32, 1.0, (1, 1, keys, width), &device).expect("v");
        // Keys growing block by block (the maximum rises twice), then shrinking (it stays).
        let growing: Vec<f32> = (0..keys)
            .map(|i| 1.0 + 3.0 * (i / KEY_BLOCK) as f32)
            .collect();
        let growing = Tensor::from_vec(growing, (1, 1, keys, 1), &device).expect("growth");
        let k = Tensor::randn(0f32, 1.0, (1, 1, keys, width), &device).expect("k");
        for k in [
            k.broadcast_mul(&growing).expect("growing keys"),
            k.broadcast_div(&growing).expect("shrinking keys"),
        ] {
            let ours = attention(&q, &k, &v, 1.0).expect("ours");
            let difference = largest_difference(&ours, &materialised(&q, &k, &v, 1.0));
            assert!(difference < 1e-5, "{difference}");
        }
    }

    #[test]
    fn attention_on_tokens_matches_the_materialised_form_of_its_heads() {
        let device = Device::Cpu;
        // Several blocks of rows (600 queries), one head, odd widths, cross-attention.
        for (batch, heads, queries, keys, width) in [
            (1, 1, 5, 7, 3),
            (2, 3, 37, 53, 24),
            (2, 5, 600, 77, 8),
            (1, 2, 130, 129, 40),
        ] {
            let channels = heads * width;
            let q = Tensor::randn(0f32, 1.0, (batch, queries, channels), &device).expect("q");
            let k = Tensor::randn(0f32, 1.0, (batch, keys, channels), &device).expect("k");
            let v = Tensor::randn(0f32, 1.0, (batch, keys, channels), &device).expect("v");
            let scale = 1.0 / (width as f64).sqrt();
            let ours = attention_tokens(&q, &k, &v, heads, scale).expect("ours");
            let split = |t: &Tensor| {
                let len = t.dim(1).expect("len");
                t.reshape((batch, len, heads, width))
                    .and_then(|t| t.transpose(1, 2))
                    .and_then(|t| t.contiguous())
                    .expect("heads")
            };
            let (q, k, v) = (split(&q), split(&k), split(&v));
            let reference = materialised(&q, &k, &v, scale)
                .transpose(1, 2)
                .and_then(|o| o.reshape((batch, queries, channels)))
                .expect("reference");
            let difference = largest_difference(&ours, &reference);
            assert!(
                difference < 1e-5,
                "{batch}x{heads}x{queries}x{keys}x{width}: {difference}"
            );
        }
    }
}
