//! CLIP prompt tokenization as diffusers does it: start token, up to 75 tokens, end token,
//! padded to 77 with the tokenizer's pad token; what is cut is reported, not silently lost.

use std::path::Path;

use super::config::{read_json, SpecialToken, TokenizerConfig};
use super::error::ModelError;

/// A prompt as token ids, with the words that did not fit.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedPrompt {
    /// Exactly `max_length` ids.
    pub ids: Vec<u32>,
    /// The text that was cut off at the token limit, if any.
    pub cut_off: Option<String>,
}

/// A CLIP tokenizer with its special tokens resolved.
pub struct PromptTokenizer {
    tokenizer: tokenizers::Tokenizer,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_length: usize,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("max_length", &self.max_length)
            .finish()
    }
}

impl PromptTokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` (optional) from `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let files = TokenizerFiles::load(dir, "tokenizer")?;
        let config = &files.config;
        let bos_id = files.special_id(config.bos_token.as_ref(), "<|startoftext|>")?;
        let eos_id = files.special_id(config.eos_token.as_ref(), "<|endoftext|>")?;
        let pad_id = files.special_id(config.pad_token.as_ref(), "<|endoftext|>")?;
        let max_length = config
            .model_max_length
            .filter(|&m| (3.0..=4096.0).contains(&m))
            .map_or(77, |m| m as usize);
        Ok(Self {
            tokenizer: files.tokenizer,
            bos_id,
            eos_id,
            pad_id,
            max_length,
        })
    }

    /// Tokenizes `text` to exactly `max_length` ids.
    pub fn tokenize(&self, text: &str) -> Result<TokenizedPrompt, String> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| format!("the prompt could not be tokenized: {e}"))?;
        let tokens = encoding.get_ids();
        let room = self.max_length - 2;
        let kept = tokens.len().min(room);
        let cut_off = if tokens.len() > room {
            let text = self
                .tokenizer
                .decode(&tokens[room..], true)
                .unwrap_or_default();
            // CLIP's vocabulary marks word ends with `</w>`; its byte-level decoder keeps them.
            Some(text.replace("</w>", " ").trim().to_string())
        } else {
            None
        };
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        ids.extend_from_slice(&tokens[..kept]);
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        Ok(TokenizedPrompt { ids, cut_off })
    }
}

/// A tokenizer folder's `tokenizer.json` and its (optional) `tokenizer_config.json`.
pub(super) struct TokenizerFiles {
    /// The parsed `tokenizer.json`.
    pub tokenizer: tokenizers::Tokenizer,
    /// The special tokens and length (defaults when the file is absent).
    pub config: TokenizerConfig,
    path: std::path::PathBuf,
}

impl TokenizerFiles {
    /// Reads both files from `dir`; `what` names the tokenizer in a missing-file error. A
    /// folder with CLIP's `vocab.json` and `merges.txt` but no `tokenizer.json` works too.
    pub fn load(dir: &Path, what: &'static str) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        let tokenizer = if path.is_file() {
            tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
                path: path.clone(),
                message: e.to_string(),
            })?
        } else if let Some(tokenizer) = super::clip_bpe::load(dir)? {
            tokenizer
        } else {
            return Err(ModelError::MissingFile { what, path });
        };
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            read_json(&config_path, "tokenizer config")?
        } else {
            TokenizerConfig::default()
        };
        Ok(Self {
            tokenizer,
            config,
            path,
        })
    }

    /// The id of `token` (as the config names it), else of `fallback`.
    pub fn special_id(
        &self,
        token: Option<&SpecialToken>,
        fallback: &str,
    ) -> Result<u32, ModelError> {
        let text = token.map_or(fallback, SpecialToken::text);
        self.tokenizer
            .token_to_id(text)
            .ok_or_else(|| ModelError::Tokenizer {
                path: self.path.clone(),
                message: format!("the special token {text:?} is not in the vocabulary"),
            })
    }
}
