//! Sums a layer adds onto its own fresh output, in place and over the threads: a residual (a
//! tensor of the output's shape) or a shift per image and channel (a resnet's time
//! embedding). candle's `+` allocates a third tensor and adds on one thread: at SD 1.5's
//! 512 px level each residual sum was a fresh 10 MB tensor written by one core.

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor};
use rayon::prelude::*;

use crate::{f32_slice, f32_slice_mut};

/// What `forward_plus` adds to a layer's output.
#[derive(Debug, Clone, Copy)]
pub enum Addend<'a> {
    /// A tensor of the output's shape, added element by element.
    Residual(&'a Tensor),
    /// `[batch, channels]`, added to every value of that image's channel of an NCHW output.
    ChannelShift(&'a Tensor),
}

/// `fresh + addend`, in place where it can be. `fresh` must be a tensor no one else holds: the
/// output a layer has just made.
pub(crate) fn add_onto(fresh: Tensor, addend: Addend) -> Result<Tensor> {
    match addend {
        Addend::Residual(residual) => {
            if !adds_in_place(&fresh, residual) {
                return fresh + residual;
            }
            refuse_misfit(
                residual.dims() == fresh.dims(),
                "residual",
                residual,
                &fresh,
            )?;
            fresh.inplace_op2(&residual.contiguous()?, &AddResidual)?;
        }
        Addend::ChannelShift(shift) => {
            if !adds_in_place(&fresh, shift) {
                return fresh.broadcast_add(&shift.unsqueeze(2)?.unsqueeze(3)?);
            }
            let (batch, channels, _, _) = fresh.dims4()?;
            refuse_misfit(shift.dims() == [batch, channels], "shift", shift, &fresh)?;
            fresh.inplace_op2(&shift.contiguous()?, &AddChannelShift)?;
        }
    }
    Ok(fresh)
}

/// Whether Easel's kernel adds `addend` onto `fresh`: both f32 on the CPU, `fresh` contiguous.
fn adds_in_place(fresh: &Tensor, addend: &Tensor) -> bool {
    fresh.is_contiguous()
        && [fresh, addend]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// An error naming both shapes unless the addend `fits`.
fn refuse_misfit(fits: bool, what: &str, addend: &Tensor, fresh: &Tensor) -> Result<()> {
    if !fits {
        candle_core::bail!(
            "{what} {:?} does not fit the output {:?}",
            addend.dims(),
            fresh.dims()
        );
    }
    Ok(())
}

/// Values added per task: large enough to amortise it, small enough to spread.
const CHUNK: usize = 1 << 15;

struct AddResidual;

impl InplaceOp2 for AddResidual {
    fn name(&self) -> &'static str {
        "easel-add-residual"
    }

    fn cpu_fwd(
        &self,
        out: &mut CpuStorage,
        out_layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> Result<()> {
        let out = f32_slice_mut("add in place", out, out_layout)?;
        let residual = f32_slice("add in place", residual, residual_layout)?;
        out.par_chunks_mut(CHUNK)
            .zip(residual.par_chunks(CHUNK))
            .for_each(|(out, residual)| add_slices(out, residual));
        Ok(())
    }
}

struct AddChannelShift;

impl InplaceOp2 for AddChannelShift {
    fn name(&self) -> &'static str {
        "easel-add-channel-shift"
    }

    fn cpu_fwd(
        &self,
        out: &mut CpuStorage,
        out_layout: &Layout,
        shift: &CpuStorage,
        shift_layout: &Layout,
    ) -> Result<()> {
        let out = f32_slice_mut("add in place", out, out_layout)?;
        let shift = f32_slice("add in place", shift, shift_layout)?;
        let plane = out.len() / shift.len().max(1);
        out.par_chunks_mut(plane.max(1))
            .zip(shift.par_iter())
            .for_each(|(values, &shift)| crate::conv2d::add_to_all(values, shift));
        Ok(())
    }
}

crate::vectorized! {
    /// `out[i] += addend[i]`.
    fn add_slices(out: &mut [f32], addend: &[f32]) = add_slices_generic
}

#[inline(always)]
fn add_slices_generic(out: &mut [f32], addend: &[f32]) {
    for (value, &add) in out.iter_mut().zip(addend) {
        *value += add;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::largest_difference;
    use candle_core::Device;

    #[test]
    fn residuals_and_channel_shifts_add_as_candles_sums_do() {
        let device = Device::Cpu;
        let out = || Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &device).expect("out");
        // A residual that is a view at an offset into a larger tensor.
        let larger = Tensor::randn(0f32, 1.0, (4, 3, 5, 7), &device).expect("larger");
        let residual = larger.narrow(0, 1, 2).expect("view");
        let fresh = out();
        let expected = (&fresh + &residual).expect("candle's sum");
        let sum = add_onto(fresh.copy().expect("copy"), Addend::Residual(&residual)).expect("sum");
        assert_eq!(largest_difference(&sum, &expected), 0.0);

        let shift = Tensor::randn(0f32, 1.0, (2, 3), &device).expect("shift");
        let fresh = out();
        let expected = fresh
            .broadcast_add(&shift.reshape((2, 3, 1, 1)).expect("shape"))
            .expect("candle's shift");
        let shifted =
            add_onto(fresh.copy().expect("copy"), Addend::ChannelShift(&shift)).expect("shifted");
        assert_eq!(largest_difference(&shifted, &expected), 0.0);
        // The addend itself is left as it was.
        assert_eq!(
            largest_difference(&residual, &larger.narrow(0, 1, 2).expect("v")),
            0.0
        );
    }

    #[test]
    fn addends_that_do_not_fit_are_refused() {
        let device = Device::Cpu;
        let fresh = Tensor::zeros((2, 3, 4, 4), DType::F32, &device).expect("out");
        let wrong = Tensor::zeros((2, 3, 4, 5), DType::F32, &device).expect("wrong");
        assert!(add_onto(fresh.copy().expect("copy"), Addend::Residual(&wrong)).is_err());
        let wrong_shift = Tensor::zeros((2, 4), DType::F32, &device).expect("shift");
        assert!(add_onto(fresh, Addend::ChannelShift(&wrong_shift)).is_err());
    }
}
