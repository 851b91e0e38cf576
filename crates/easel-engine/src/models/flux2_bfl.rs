//! The FLUX.2 transformer from Black Forest Labs' single file (`flux-2-klein-4b.safetensors`,
//! which the hub repository ships beside the diffusers folders): each diffusers name the
//! transformer asks for is read from its BFL tensor, q, k and v cut from the stacked `qkv`
//! rows, and `norm_out` with its halves swapped (BFL stores shift | scale, diffusers
//! scale | shift), as diffusers' `convert_flux2_transformer_checkpoint_to_diffusers` maps them.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::error::ModelError;
use super::renamed_tensors::{renamed_var_builder, Source};

/// Whether a folder's root holds a BFL FLUX.2 single file, and which.
pub fn find_single_file(dir: &Path) -> Option<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase())
                .is_some_and(|n| n.starts_with("flux-2") && n.ends_with(".safetensors"))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// A `VarBuilder` over a BFL FLUX.2 file that answers diffusers names; `inner` is the
/// transformer's width (heads x head width).
pub fn bfl_var_builder(
    file: &Path,
    inner: usize,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, ModelError> {
    renamed_var_builder(
        file,
        move |name| bfl_source(name, inner),
        "BFL tensor",
        dtype,
        device,
    )
}

/// The BFL tensor (or rows of it) that holds the diffusers-named tensor `name` of a
/// transformer `inner` wide; `None` for names BFL files do not have.
pub(crate) fn bfl_source(name: &str, inner: usize) -> Option<Source> {
    let whole = |n: String| Some(Source::Whole(n));
    let name = name.strip_suffix(".weight").map_or(name, |n| n);
    let fixed = match name {
        "x_embedder" => Some("img_in"),
        "context_embedder" => Some("txt_in"),
        "time_guidance_embed.timestep_embedder.linear_1" => Some("time_in.in_layer"),
        "time_guidance_embed.timestep_embedder.linear_2" => Some("time_in.out_layer"),
        "double_stream_modulation_img.linear" => Some("double_stream_modulation_img.lin"),
        "double_stream_modulation_txt.linear" => Some("double_stream_modulation_txt.lin"),
        "single_stream_modulation.linear" => Some("single_stream_modulation.lin"),
        "proj_out" => Some("final_layer.linear"),
        _ => None,
    };
    if let Some(bfl) = fixed {
        return whole(format!("{bfl}.weight"));
    }
    if name == "norm_out.linear" {
        return Some(Source::SwappedHalves(
            "final_layer.adaLN_modulation.1.weight".into(),
        ));
    }
    if let Some(rest) = name.strip_prefix("transformer_blocks.") {
        let (index, part) = rest.split_once('.')?;
        let block = format!("double_blocks.{index}");
        let qkv = |stream: &str, which: usize| {
            Some(Source::Rows(
                format!("{block}.{stream}_attn.qkv.weight"),
                which * inner,
                inner,
            ))
        };
        return match part {
            "attn.to_q" => qkv("img", 0),
            "attn.to_k" => qkv("img", 1),
            "attn.to_v" => qkv("img", 2),
            "attn.add_q_proj" => qkv("txt", 0),
            "attn.add_k_proj" => qkv("txt", 1),
            "attn.add_v_proj" => qkv("txt", 2),
            "attn.norm_q" => whole(format!("{block}.img_attn.norm.query_norm.scale")),
            "attn.norm_k" => whole(format!("{block}.img_attn.norm.key_norm.scale")),
            "attn.norm_added_q" => whole(format!("{block}.txt_attn.norm.query_norm.scale")),
            "attn.norm_added_k" => whole(format!("{block}.txt_attn.norm.key_norm.scale")),
            "attn.to_out.0" => whole(format!("{block}.img_attn.proj.weight")),
            "attn.to_add_out" => whole(format!("{block}.txt_attn.proj.weight")),
            "ff.linear_in" => whole(format!("{block}.img_mlp.0.weight")),
            "ff.linear_out" => whole(format!("{block}.img_mlp.2.weight")),
            "ff_context.linear_in" => whole(format!("{block}.txt_mlp.0.weight")),
            "ff_context.linear_out" => whole(format!("{block}.txt_mlp.2.weight")),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("single_transformer_blocks.") {
        let (index, part) = rest.split_once('.')?;
        let block = format!("single_blocks.{index}");
        return match part {
            "attn.to_qkv_mlp_proj" => whole(format!("{block}.linear1.weight")),
            "attn.to_out" => whole(format!("{block}.linear2.weight")),
            "attn.norm_q" => whole(format!("{block}.norm.query_norm.scale")),
            "attn.norm_k" => whole(format!("{block}.norm.key_norm.scale")),
            _ => None,
        };
    }
    None
}
