//! "Will it fit": a model's peak memory at a size and precision, estimated from its
//! parameter counts and the largest activations its networks hold, against what the device
//! has free. An estimate to decide before a download or a load, not a measurement (the
//! benchmark measures).

use super::catalog::{CatalogEntry, DenoiserFootprint, Part, Stored};

/// Room for the runtime itself: kernels, allocator slack, the window's textures.
const OVERHEAD_BYTES: u64 = 512 << 20;

/// Peak memory a model is estimated to need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Every weight, in the run's precision (GGUF weights as stored).
    pub weights_bytes: u64,
    /// The largest activations of one stage (denoiser or VAE) at the size.
    pub activations_bytes: u64,
    /// Everything loaded together, plus the largest activations.
    pub full_bytes: u64,
    /// Low-memory mode: the largest stage's weights with its activations.
    pub staged_bytes: u64,
}

/// What the estimate means on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fits with everything loaded.
    Fits,
    /// Fits only in low-memory mode (one stage at a time).
    FitsLowMemory,
    /// Does not fit even one stage at a time.
    TooBig,
    /// The device does not say how much memory it has.
    Unknown,
}

impl Verdict {
    /// The verdict of `estimate` against `available_bytes`.
    pub fn of(estimate: &MemoryEstimate, available_bytes: Option<u64>) -> Self {
        match available_bytes {
            None => Verdict::Unknown,
            Some(free) if estimate.full_bytes <= free => Verdict::Fits,
            Some(free) if estimate.staged_bytes <= free => Verdict::FitsLowMemory,
            Some(_) => Verdict::TooBig,
        }
    }

    /// A few words for lists.
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::Fits => "fits",
            Verdict::FitsLowMemory => "fits in low-memory mode",
            Verdict::TooBig => "too big for this device",
            Verdict::Unknown => "device memory unknown",
        }
    }
}

/// Bytes of weights per pipeline stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartBytes {
    /// Text encoders together.
    pub text_bytes: u64,
    /// UNet or transformer.
    pub denoiser_bytes: u64,
    /// VAE or autoencoder.
    pub vae_bytes: u64,
}

/// The peak memory of `entry` generating `width_px` x `height_px` with weights of
/// `bytes_per_weight` (4 for f32, 2 for f16/bf16).
pub fn estimate(
    entry: &CatalogEntry,
    bytes_per_weight: u64,
    width_px: u32,
    height_px: u32,
) -> MemoryEstimate {
    let part_bytes = |part: Part| -> u64 {
        entry
            .weights()
            .filter(|w| w.part == part)
            .map(|w| match w.stored {
                Stored::Quantized(_) => (w.params as f64 * w.stored.bytes_per_param()) as u64,
                Stored::F32 | Stored::Half => w.params * bytes_per_weight,
            })
            .sum()
    };
    let parts = PartBytes {
        text_bytes: part_bytes(Part::TextEncoder),
        denoiser_bytes: part_bytes(Part::Denoiser),
        vae_bytes: part_bytes(Part::Vae),
    };
    estimate_parts(
        parts,
        entry.footprint,
        bytes_per_weight,
        width_px,
        height_px,
    )
}

/// The peak memory of weights `parts` of a denoiser of `footprint` at `width_px` x
/// `height_px`, with activations of `bytes_per_weight` (4 for f32, 2 for f16/bf16).
pub fn estimate_parts(
    parts: PartBytes,
    footprint: DenoiserFootprint,
    bytes_per_weight: u64,
    width_px: u32,
    height_px: u32,
) -> MemoryEstimate {
    let PartBytes {
        text_bytes,
        denoiser_bytes,
        vae_bytes,
    } = parts;
    let b = bytes_per_weight;
    let (w, h) = (u64::from(width_px), u64::from(height_px));
    let denoiser_act = denoiser_activations(footprint, w, h, b);
    let vae_act = vae_decode_activations(w, h, b);
    let weights_bytes = text_bytes + denoiser_bytes + vae_bytes;
    let activations_bytes = denoiser_act.max(vae_act);
    MemoryEstimate {
        weights_bytes,
        activations_bytes,
        full_bytes: weights_bytes + activations_bytes + OVERHEAD_BYTES,
        staged_bytes: text_bytes
            .max(denoiser_bytes + denoiser_act)
            .max(vae_bytes + vae_act)
            + OVERHEAD_BYTES,
    }
}

/// The denoiser's largest live tensors: the attention scores and their softmax at the
/// level with the most tokens (classifier-free guidance doubles the batch), plus the feature
/// maps it keeps.
fn denoiser_activations(footprint: DenoiserFootprint, w: u64, h: u64, b: u64) -> u64 {
    let latent_px = (w / 8) * (h / 8);
    let tokens = latent_px / footprint.latent_px_per_token.max(1) + footprint.joint_text_tokens;
    let scores = footprint.batch * footprint.heads * tokens * tokens * b * 2;
    let feature_entries = if footprint.features_per_token {
        tokens
    } else {
        latent_px
    };
    let features =
        footprint.batch * feature_entries * footprint.feature_channels * b * footprint.feature_maps;
    scores + features
}

/// The VAE decoder untiled: its single-head mid-block attention over the latent pixels and
/// a few full-resolution feature maps of 128 and 256 channels.
fn vae_decode_activations(w: u64, h: u64, b: u64) -> u64 {
    let latent_tokens = (w / 8) * (h / 8);
    latent_tokens * latent_tokens * b * 2 + w * h * b * (128 * 4 + 256)
}

/// The memory a model can use: the GPU's free memory (`(used, limit)`) where there is a
/// GPU, else the machine's available memory (`(total, available)`).
pub fn free_bytes(gpu_bytes: Option<(u64, u64)>, system_bytes: Option<(u64, u64)>) -> Option<u64> {
    match gpu_bytes {
        Some((used, limit)) => Some(limit.saturating_sub(used)),
        None => system_bytes.map(|(_, available)| available),
    }
}

/// Bytes as "3.4 GB".
pub fn format_gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::catalog::find;

    fn estimate_of(id: &str, bytes: u64, side: u32) -> MemoryEstimate {
        let entry = find(id).map(|e| estimate(e, bytes, side, side));
        entry.unwrap_or(MemoryEstimate {
            weights_bytes: 0,
            activations_bytes: 0,
            full_bytes: 0,
            staged_bytes: 0,
        })
    }

    #[test]
    fn estimates_grow_with_size_and_precision_and_staging_saves() {
        let small = estimate_of("sd15", 2, 512);
        let large = estimate_of("sd15", 2, 1024);
        let f32 = estimate_of("sd15", 4, 512);
        assert!(small.full_bytes > 0);
        assert!(large.activations_bytes > 4 * small.activations_bytes);
        assert_eq!(f32.weights_bytes, 2 * small.weights_bytes);
        assert!(small.staged_bytes < small.full_bytes);
    }

    #[test]
    fn verdicts_match_what_artists_see_on_common_cards() {
        let gb = |n: u64| Some(n * 1_000_000_000);
        // SD 1.5 in fp16 at 512 runs on an 8 GB card; SDXL in fp16 at 1024 does not fit in 8 GB
        // with everything loaded.
        let sd15 = estimate_of("sd15", 2, 512);
        assert_eq!(Verdict::of(&sd15, gb(8)), Verdict::Fits);
        let sdxl = estimate_of("sdxl", 2, 1024);
        assert_ne!(Verdict::of(&sdxl, gb(8)), Verdict::Fits);
        assert_eq!(Verdict::of(&sdxl, gb(16)), Verdict::Fits);
        // FLUX.1 in bf16 is ~34 GB of weights: not on a 24 GB card whole, and its 24 GB
        // transformer alone does not fit in 16; the 4-bit transformer does.
        let flux = estimate_of("flux-dev", 2, 1024);
        assert!(flux.weights_bytes > 33_000_000_000);
        assert_ne!(Verdict::of(&flux, gb(24)), Verdict::Fits);
        assert_eq!(Verdict::of(&flux, gb(16)), Verdict::TooBig);
        let gguf = estimate_of("flux-dev-gguf", 2, 1024);
        assert_eq!(Verdict::of(&gguf, gb(16)), Verdict::FitsLowMemory);
        assert_eq!(Verdict::of(&gguf, None), Verdict::Unknown);
    }
}
