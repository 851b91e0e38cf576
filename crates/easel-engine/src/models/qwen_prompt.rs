//! Prompts for a Qwen3 text encoder as FLUX.2 [klein] gives them: the chat template with one
//! user message and an empty think block, tokenized with its special tokens matched whole,
//! cut at `max_length` and right-padded to it with the pad token (the mask marks real tokens).

use std::path::Path;

use super::error::ModelError;
use super::tokenizer::TokenizerFiles;

/// What the encoder reads: exactly `max_length` ids and as many mask values.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenTokens {
    /// Token ids, padded.
    pub ids: Vec<u32>,
    /// 1 for a real token, 0 for padding.
    pub mask: Vec<u32>,
    /// The text cut off past `max_length`, if any (the template's tail goes first).
    pub cut_off: Option<String>,
}

/// A Qwen tokenizer with its pad token resolved.
pub struct QwenPromptTokenizer {
    files: TokenizerFiles,
    pad_id: u32,
    max_length: usize,
}

impl std::fmt::Debug for QwenPromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QwenPromptTokenizer")
            .field("pad_id", &self.pad_id)
            .field("max_length", &self.max_length)
            .finish()
    }
}

/// The chat template Qwen3 renders for one user message, a generation prompt and thinking
/// off (what `Flux2KleinPipeline` feeds its text encoder).
pub fn chat_template(prompt: &str) -> String {
    format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
}

impl QwenPromptTokenizer {
    /// Loads `tokenizer.json` (and `tokenizer_config.json`) from `dir`; prompts become
    /// `max_length` tokens.
    pub fn load(dir: &Path, max_length: usize) -> Result<Self, ModelError> {
        let files = TokenizerFiles::load(dir, "Qwen tokenizer")?;
        let pad_id = files.special_id(files.config.pad_token.as_ref(), "<|endoftext|>")?;
        Ok(Self {
            files,
            pad_id,
            max_length,
        })
    }

    /// The templated prompt as ids and mask.
    pub fn tokenize(&self, prompt: &str) -> Result<QwenTokens, String> {
        let text = chat_template(prompt);
        let encoding = self
            .files
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| format!("the prompt could not be tokenized: {e}"))?;
        let tokens = encoding.get_ids();
        let kept = tokens.len().min(self.max_length);
        let cut_off = (tokens.len() > kept).then(|| {
            self.files
                .tokenizer
                .decode(&tokens[kept..], false)
                .unwrap_or_default()
        });
        let mut ids = tokens[..kept].to_vec();
        let mut mask = vec![1; kept];
        ids.resize(self.max_length, self.pad_id);
        mask.resize(self.max_length, 0);
        Ok(QwenTokens { ids, mask, cut_off })
    }
}
