//! T5 prompt tokenization as FLUX's pipeline does it: the prompt's tokens, cut to leave room
//! for the end token, the end token `</s>`, then `<pad>` up to `max_sequence_length`; what is
//! cut is reported.

use std::path::Path;

use super::error::ModelError;
use super::tokenizer::{TokenizedPrompt, TokenizerFiles};

/// A T5 (SentencePiece) tokenizer with its end and pad tokens resolved.
pub struct T5Tokenizer {
    tokenizer: tokenizers::Tokenizer,
    eos_id: u32,
    pad_id: u32,
}

impl std::fmt::Debug for T5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Tokenizer")
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

impl T5Tokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` (optional) from `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let files = TokenizerFiles::load(dir, "T5 tokenizer")?;
        let eos_id = files.special_id(files.config.eos_token.as_ref(), "</s>")?;
        let pad_id = files.special_id(files.config.pad_token.as_ref(), "<pad>")?;
        Ok(Self {
            tokenizer: files.tokenizer,
            eos_id,
            pad_id,
        })
    }

    /// Tokenizes `text` to exactly `max_length` ids.
    pub fn tokenize(&self, text: &str, max_length: usize) -> Result<TokenizedPrompt, String> {
        if max_length < 2 {
            return Err(format!(
                "a T5 sequence of {max_length} tokens has no room for the prompt"
            ));
        }
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| format!("the prompt could not be tokenized: {e}"))?;
        let tokens = encoding.get_ids();
        let room = max_length - 1;
        let kept = tokens.len().min(room);
        let cut_off = if tokens.len() > room {
            let rest = self
                .tokenizer
                .decode(&tokens[room..], true)
                .unwrap_or_default();
            Some(rest.trim().to_string())
        } else {
            None
        };
        let mut ids = Vec::with_capacity(max_length);
        ids.extend_from_slice(&tokens[..kept]);
        ids.push(self.eos_id);
        ids.resize(max_length, self.pad_id);
        Ok(TokenizedPrompt { ids, cut_off })
    }
}
