//! Errors met while finding, reading and loading a model's files.

use std::path::PathBuf;

/// A model folder or one of its files could not be used. Every variant names the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// The model folder itself does not exist.
    #[error("model folder not found: {path}. Pick an existing diffusers model folder (one with model_index.json).")]
    FolderNotFound {
        /// The folder that was asked for.
        path: PathBuf,
    },
    /// A file the model needs is not there.
    #[error("{what} is missing: expected {path}. The model folder is incomplete; download the model again.")]
    MissingFile {
        /// What the file is for, in words ("tokenizer", "UNet config").
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("could not read {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        message: String,
    },
    /// A JSON config is malformed or has values Easel can't use.
    #[error("{what} is not valid: {message}. The file may be damaged or from an unsupported model; file: {path}")]
    BadConfig {
        /// What the file is for, in words.
        what: &'static str,
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A weight file is truncated, damaged, or does not match its config.
    #[error("the weights could not be loaded: {message}. The file may be truncated, damaged or belong to another model; download it again. File: {path}")]
    BadWeights {
        /// The weight file.
        path: PathBuf,
        /// What candle reported.
        message: String,
    },
    /// The tokenizer file could not be parsed.
    #[error("the tokenizer could not be loaded: {message}. File: {path}")]
    Tokenizer {
        /// The tokenizer.json file.
        path: PathBuf,
        /// What the tokenizers crate reported.
        message: String,
    },
    /// The model uses a feature Easel does not implement.
    #[error("{what} is not supported yet (file: {path})")]
    Unsupported {
        /// What is not supported.
        what: String,
        /// The config that asks for it.
        path: PathBuf,
    },
}
