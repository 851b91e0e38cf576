//! Model architectures and the files they load from.

pub mod clip;
pub mod config;
pub mod error;
pub mod sd;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;
