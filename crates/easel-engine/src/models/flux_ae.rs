//! FLUX.1's autoencoder from Black Forest Labs' `ae.safetensors`, built as Easel's
//! `AutoencoderKL` (`vae::Vae`, from the folder's `vae/config.json`): each diffusers name the
//! VAE asks for is read from its BFL tensor, as diffusers' `convert_flux_to_diffusers` maps
//! them. BFL numbers the decoder's levels from the full-resolution end, diffusers from the
//! latent end; its attention projections are 1x1 convolutions, which the VAE takes as stored.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::error::ModelError;
use super::renamed_tensors::{renamed_var_builder, Source};

/// A `VarBuilder` over BFL's autoencoder `file` that answers diffusers names; `levels` is
/// the number of resolution levels (`block_out_channels`' length).
pub fn bfl_autoencoder_var_builder(
    file: &Path,
    levels: usize,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, ModelError> {
    renamed_var_builder(
        file,
        move |name| bfl_name(name, levels).map(Source::Whole),
        "tensor of BFL's autoencoder",
        dtype,
        device,
    )
}

/// The BFL name of the diffusers-named autoencoder tensor `name` (with `levels` resolution
/// levels); `None` for names BFL's file does not have.
fn bfl_name(name: &str, levels: usize) -> Option<String> {
    let (coder, rest) = name.split_once('.')?;
    if coder != "encoder" && coder != "decoder" {
        return None;
    }
    let (layer, param) = rest.rsplit_once('.')?;
    let layer = match layer {
        "conv_in" | "conv_out" => layer.to_string(),
        "conv_norm_out" => "norm_out".to_string(),
        _ => {
            if let Some(mid) = layer.strip_prefix("mid_block.") {
                mid_block_name(mid)?
            } else if let Some(level) = layer.strip_prefix("down_blocks.") {
                level_name(
                    level,
                    "down",
                    "downsamplers.0.conv",
                    "downsample.conv",
                    Some,
                )?
            } else if let Some(level) = layer.strip_prefix("up_blocks.") {
                // diffusers' first up block is BFL's last level.
                level_name(level, "up", "upsamplers.0.conv", "upsample.conv", |i| {
                    levels.checked_sub(i + 1)
                })?
            } else {
                return None;
            }
        }
    };
    Some(format!("{coder}.{layer}.{param}"))
}

/// `resnets.0` / `resnets.1` / `attentions.0.<projection>` of a mid block.
fn mid_block_name(mid: &str) -> Option<String> {
    if let Some(resnet) = mid.strip_prefix("resnets.") {
        let (index, part) = resnet.split_once('.')?;
        let block = match index {
            "0" => "block_1",
            "1" => "block_2",
            _ => return None,
        };
        return Some(format!("mid.{block}.{}", resnet_part(part)?));
    }
    let projection = match mid.strip_prefix("attentions.0.")? {
        "group_norm" => "norm",
        "to_q" => "q",
        "to_k" => "k",
        "to_v" => "v",
        "to_out.0" => "proj_out",
        _ => return None,
    };
    Some(format!("mid.attn_1.{projection}"))
}

/// A level's resnets and its resampling convolution: `<i>.resnets.<j>.<part>` or
/// `<i>.<resample>`, with BFL's level index from `level_index`.
fn level_name(
    level: &str,
    bfl_levels: &str,
    resample: &str,
    bfl_resample: &str,
    level_index: impl Fn(usize) -> Option<usize>,
) -> Option<String> {
    let (index, part) = level.split_once('.')?;
    let index = level_index(index.parse().ok()?)?;
    if part == resample {
        return Some(format!("{bfl_levels}.{index}.{bfl_resample}"));
    }
    let (block, part) = part.strip_prefix("resnets.")?.split_once('.')?;
    Some(format!(
        "{bfl_levels}.{index}.block.{block}.{}",
        resnet_part(part)?
    ))
}

/// A resnet's layer: the same name in both but the shortcut.
fn resnet_part(part: &str) -> Option<&str> {
    match part {
        "norm1" | "conv1" | "norm2" | "conv2" => Some(part),
        "conv_shortcut" => Some("nin_shortcut"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_names_map_to_bfls_with_the_decoder_levels_reversed() {
        for (diffusers, bfl) in [
            ("encoder.conv_in.weight", "encoder.conv_in.weight"),
            (
                "encoder.down_blocks.1.resnets.0.conv_shortcut.bias",
                "encoder.down.1.block.0.nin_shortcut.bias",
            ),
            (
                "encoder.down_blocks.2.downsamplers.0.conv.weight",
                "encoder.down.2.downsample.conv.weight",
            ),
            (
                "decoder.up_blocks.0.resnets.2.norm1.weight",
                "decoder.up.3.block.2.norm1.weight",
            ),
            (
                "decoder.up_blocks.2.upsamplers.0.conv.bias",
                "decoder.up.1.upsample.conv.bias",
            ),
            (
                "decoder.mid_block.attentions.0.to_out.0.weight",
                "decoder.mid.attn_1.proj_out.weight",
            ),
            (
                "encoder.mid_block.attentions.0.group_norm.bias",
                "encoder.mid.attn_1.norm.bias",
            ),
            (
                "decoder.mid_block.resnets.1.conv2.weight",
                "decoder.mid.block_2.conv2.weight",
            ),
            ("decoder.conv_norm_out.weight", "decoder.norm_out.weight"),
        ] {
            assert_eq!(bfl_name(diffusers, 4).as_deref(), Some(bfl), "{diffusers}");
        }
        for unknown in [
            "quant_conv.weight",
            "decoder.up_blocks.4.resnets.0.conv1.weight",
            "encoder.mid_block.resnets.2.conv1.weight",
            "decoder.mid_block.attentions.0.query.weight",
        ] {
            assert_eq!(bfl_name(unknown, 4), None, "{unknown}");
        }
    }
}
