//! FLUX.2's latent space over its autoencoder's 32-channel latents: 2x2 patches to 128
//! channels (channel `c*4 + 2*dy + dx` from pixel `(2i+dy, 2j+dx)` of channel `c`), normalised
//! by the autoencoder's BatchNorm running statistics (no scale or shift factor), and packed
//! row-major into tokens.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// The BatchNorm statistics over the 128 patchified channels.
#[derive(Debug, Clone)]
pub struct Flux2LatentNorm {
    /// `bn.running_mean`, `[1, 128, 1, 1]`.
    mean: Tensor,
    /// `sqrt(bn.running_var + eps)`, `[1, 128, 1, 1]`.
    std: Tensor,
}

impl Flux2LatentNorm {
    /// Reads `bn.running_mean` and `bn.running_var` (128 values each) from the autoencoder's
    /// weights; `eps` is the config's `batch_norm_eps` (1e-4).
    pub fn new(vb: &VarBuilder, channels: usize, eps: f64) -> Result<Self> {
        let bn = vb.pp("bn");
        let mean = bn.get(channels, "running_mean")?.to_dtype(DType::F32)?;
        let var = bn.get(channels, "running_var")?.to_dtype(DType::F32)?;
        let std = (var + eps)?.sqrt()?;
        Ok(Self {
            mean: mean.reshape((1, channels, 1, 1))?,
            std: std.reshape((1, channels, 1, 1))?,
        })
    }

    /// `(z - mean) / std` per channel of patchified latents `[B, 128, h, w]`.
    pub fn normalize(&self, z: &Tensor) -> Result<Tensor> {
        z.broadcast_sub(&self.mean.to_device(z.device())?)?
            .broadcast_div(&self.std.to_device(z.device())?)
    }

    /// `z * std + mean`, the inverse of `normalize`.
    pub fn denormalize(&self, z: &Tensor) -> Result<Tensor> {
        z.broadcast_mul(&self.std.to_device(z.device())?)?
            .broadcast_add(&self.mean.to_device(z.device())?)
    }
}

/// `[B, C, H, W]` to `[B, 4C, H/2, W/2]`, channel `c*4 + 2*dy + dx` from `(2i+dy, 2j+dx)`.
pub fn patchify(z: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = z.dims4()?;
    z.reshape((b, c, h / 2, 2, w / 2, 2))?
        .permute((0, 1, 3, 5, 2, 4))?
        .reshape((b, c * 4, h / 2, w / 2))
}

/// The inverse of `patchify`.
pub fn unpatchify(z: &Tensor) -> Result<Tensor> {
    let (b, c4, h, w) = z.dims4()?;
    let c = c4 / 4;
    z.reshape((b, c, 2, 2, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((b, c, h * 2, w * 2))
}

/// `[B, C, h, w]` to tokens `[B, h*w, C]`, row-major.
pub fn pack(z: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = z.dims4()?;
    z.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
}

/// Tokens `[B, h*w, C]` back to `[B, C, h, w]`.
pub fn unpack(tokens: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c) = tokens.dims3()?;
    tokens.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn patches_take_their_channels_from_the_right_pixels_and_round_trip() -> Result<()> {
        // One channel, 4x4: value = 10*row + col.
        let values: Vec<f32> = (0..16).map(|i| (10 * (i / 4) + i % 4) as f32).collect();
        let z = Tensor::from_vec(values, (1, 1, 4, 4), &Device::Cpu)?;
        let patched = patchify(&z)?;
        assert_eq!(patched.dims(), &[1, 4, 2, 2]);
        // Channel 2*dy + dx at token (i, j) is pixel (2i+dy, 2j+dx): token (1, 0), dy 1, dx 0.
        let at = patched.get(0)?.get(2)?.get(1)?.get(0)?.to_scalar::<f32>()?;
        assert_eq!(at, 30.0);
        let back = unpatchify(&patched)?;
        assert_eq!(
            back.flatten_all()?.to_vec1::<f32>()?,
            z.flatten_all()?.to_vec1::<f32>()?
        );
        let tokens = pack(&patched)?;
        assert_eq!(tokens.dims(), &[1, 4, 4]);
        let unpacked = unpack(&tokens, 2, 2)?;
        assert_eq!(
            unpacked.flatten_all()?.to_vec1::<f32>()?,
            patched.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }
}
