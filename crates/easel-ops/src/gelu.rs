//! The tanh-approximated GELU of FLUX.1's MLPs, `x (1 + tanh(u)) / 2` with
//! `u = sqrt(2 / pi) (x + 0.044715 x^3)`, computed as `x / (1 + e^(-2u))` (the same value)
//! with an `exp` that vectorises; candle's form calls the C library's `tanhf` once per
//! element. It reads rows in place from a slice of a wider tensor (the MLP's part of a
//! fused projection) and writes a new contiguous tensor.
//!
//! Other devices and dtypes take candle's `gelu`.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::exp::exp;

/// The tanh-approximated GELU of every element of `x`.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    crate::op_times::timed(
        || format!("gelu_tanh {:?}", x.dims()),
        || {
            if x.device().is_cpu() && x.dtype() == DType::F32 {
                let x = if rows_of(x.layout()).is_some() {
                    x.clone()
                } else {
                    x.contiguous()?
                };
                return x.apply_op1_no_bwd(&GeluTanhOp);
            }
            x.gelu()
        },
    )
}

/// Where the rows of `layout` lie when each row (its last dimension) is contiguous and the
/// rows are evenly spaced: `(start, rows, row_len, row_stride)`.
fn rows_of(layout: &Layout) -> Option<(usize, usize, usize, usize)> {
    let dims = layout.dims();
    let strides = layout.stride();
    let (&row_len, outer) = dims.split_last()?;
    if row_len > 1 && strides.last() != Some(&1) {
        return None;
    }
    let rows: usize = outer.iter().product();
    let row_stride = if outer.is_empty() {
        row_len
    } else {
        strides[outer.len() - 1]
    };
    // Every outer dimension must step by whole rows of the one inside it.
    let mut expected = row_stride;
    for axis in (0..outer.len()).rev() {
        if outer[axis] > 1 && strides[axis] != expected {
            return None;
        }
        expected *= outer[axis];
    }
    if rows > 1 && row_stride < row_len {
        return None;
    }
    Some((layout.start_offset(), rows, row_len, row_stride))
}

struct GeluTanhOp;

impl CustomOp1 for GeluTanhOp {
    fn name(&self) -> &'static str {
        "easel-gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, rows, row_len, row_stride)) = rows_of(layout) else {
            candle_core::bail!("gelu_tanh: rows must be contiguous and evenly spaced")
        };
        let values = storage.as_slice::<f32>()?;
        let mut out = crate::output::zeros(rows * row_len);
        if rows == 0 || row_len == 0 {
            return Ok((CpuStorage::F32(out), layout.shape().clone()));
        }
        let end = start + (rows - 1) * row_stride + row_len;
        if values.len() < end {
            candle_core::bail!("gelu_tanh: the layout runs past its storage")
        }
        let input = &values[start..end];
        // Several rows a task, so that each is worth a thread.
        let rows_per_task = (16_384 / row_len).max(1);
        out.par_chunks_mut(row_len * rows_per_task)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * rows_per_task;
                for (r, out) in out.chunks_mut(row_len).enumerate() {
                    let offset = (first + r) * row_stride;
                    gelu_row(&input[offset..offset + row_len], out);
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

crate::vectorized! {
    /// `out` = the GELU of `input`, element by element.
    fn gelu_row(input: &[f32], out: &mut [f32]) = gelu_row_generic
}

#[inline(always)]
fn gelu_row_generic(input: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(input) {
        *o = gelu(x);
    }
}

/// `x / (1 + e^(-2u))`, which is `x (1 + tanh u) / 2`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * x * 0.044_715f32.mul_add(x * x, 1.0);
    x / (1.0 + exp(-2.0 * u))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::largest_difference;
    use candle_core::{Device, D};

    #[test]
    fn gelu_tanh_matches_candles_on_whole_tensors_and_on_slices_of_wider_ones() {
        let device = Device::Cpu;
        for dims in [(2usize, 7usize, 10usize), (1, 300, 1536), (3, 1, 6)] {
            let x = (Tensor::randn(0f32, 1.0, dims, &device).unwrap() * 4.0).unwrap();
            let ours = gelu_tanh(&x).unwrap();
            assert!(
                largest_difference(&ours, &x.gelu().unwrap()) < 2e-6,
                "{dims:?}"
            );
            // The last third of every row, read in place.
            let width = dims.2 / 3 * 3;
            let part = x.narrow(D::Minus1, dims.2 - width / 3, width / 3).unwrap();
            assert!(rows_of(part.layout()).is_some());
            let ours = gelu_tanh(&part).unwrap();
            assert_eq!(ours.dims(), part.dims());
            assert!(
                largest_difference(&ours, &part.gelu().unwrap()) < 2e-6,
                "{dims:?}"
            );
        }
        // A transposed tensor is copied first, and still right.
        let x = Tensor::randn(0f32, 3.0, (5, 9), &device)
            .unwrap()
            .t()
            .unwrap();
        assert!(rows_of(x.layout()).is_none());
        let ours = gelu_tanh(&x).unwrap();
        assert!(largest_difference(&ours, &x.gelu().unwrap()) < 2e-6);
    }

    #[test]
    fn the_tails_go_to_zero_and_to_x_without_overflow() {
        for x in [-1000.0f32, -60.0, -12.0] {
            assert!(gelu(x).abs() < 1e-30, "{x}: {}", gelu(x));
        }
        for x in [12.0f32, 60.0, 1000.0] {
            assert_eq!(gelu(x), x);
        }
        assert_eq!(gelu(0.0), 0.0);
    }
}
