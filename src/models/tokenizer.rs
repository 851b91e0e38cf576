//! CLIP prompt tokenization as diffusers does it: start token, up to 75 tokens, end token,
//! padded to 77 with the tokenizer's pad token; what is cut is reported, not silently lost.

use std::path::Path;

use super::config::{read_json, TokenizerConfig};
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
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                what: "tokenizer",
                path,
            });
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let config_path = dir.join("tokenizer_config.json");
        let config: TokenizerConfig = if config_path.is_file() {
            read_json(&config_path, "tokenizer config")?
        } else {
            TokenizerConfig::default()
        };
        let id_of = |token: Option<&str>, fallback: &str| -> Result<u32, ModelError> {
            let text = token.unwrap_or(fallback);
            tokenizer
                .token_to_id(text)
                .ok_or_else(|| ModelError::Tokenizer {
                    path: path.clone(),
                    message: format!("the special token {text:?} is not in the vocabulary"),
                })
        };
        let bos_id = id_of(
            config.bos_token.as_ref().map(|t| t.text()),
            "<|startoftext|>",
        )?;
        let eos_id = id_of(config.eos_token.as_ref().map(|t| t.text()), "<|endoftext|>")?;
        let pad_id = id_of(config.pad_token.as_ref().map(|t| t.text()), "<|endoftext|>")?;
        let max_length = config
            .model_max_length
            .filter(|&m| (3.0..=4096.0).contains(&m))
            .map_or(77, |m| m as usize);
        Ok(Self {
            tokenizer,
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
