//! Model architectures and the files they load from.

pub mod clip;
mod clip_bpe;
pub mod component;
pub mod config;
mod config_ranges;
pub mod error;
pub mod flux;
pub mod flux2;
pub mod flux2_bfl;
pub mod flux2_gguf;
pub mod flux2_latents;
pub mod flux2_transformer;
pub mod flux2_weights;
pub mod flux_ae;
pub mod flux_transformer;
pub mod flux_weights;
mod gguf_check;
pub mod joint_attention;
pub mod qwen3;
pub mod qwen_prompt;
mod renamed_tensors;

pub mod sd;
pub mod t5;
pub mod t5_tokenizer;
pub mod tensor_reader;
pub mod tiles;
pub mod tokenizer;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
pub mod vae_blocks;
pub mod weights;
