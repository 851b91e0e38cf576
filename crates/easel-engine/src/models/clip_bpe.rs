//! A CLIP tokenizer from `vocab.json` and `merges.txt`, for the repositories that ship those
//! instead of `tokenizer.json` (the real SD 1.5 and SDXL repos do). It is the same pipeline
//! that `transformers` writes into `tokenizer.json` when it converts `CLIPTokenizer`: NFC,
//! whitespace runs to one space, lower case; CLIP's split pattern, then byte-level; BPE with
//! `</w>` marking word ends; the first 48 894 merges after the `#version` line, as
//! `CLIPTokenizer` reads them.

use std::path::Path;

use serde_json::{json, Value};

use super::error::ModelError;

/// The merges `CLIPTokenizer` reads: `49152 - 256 - 2` after the header line.
const MERGES_USED: usize = 49_152 - 256 - 2;
const START_TOKEN: &str = "<|startoftext|>";
const END_TOKEN: &str = "<|endoftext|>";

/// The tokenizer `dir/vocab.json` and `dir/merges.txt` make, or `None` when either is absent.
pub(super) fn load(dir: &Path) -> Result<Option<tokenizers::Tokenizer>, ModelError> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    if !vocab_path.is_file() || !merges_path.is_file() {
        return Ok(None);
    }
    let fail = |path: &Path, message: String| ModelError::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    let vocab_text = std::fs::read_to_string(&vocab_path)
        .map_err(|e| fail(&vocab_path, format!("unreadable: {e}")))?;
    let vocab: serde_json::Map<String, Value> = serde_json::from_str(&vocab_text).map_err(|e| {
        fail(
            &vocab_path,
            format!("not a JSON object of tokens and ids: {e}"),
        )
    })?;
    let id_of = |token: &str| {
        vocab.get(token).and_then(Value::as_u64).ok_or_else(|| {
            fail(
                &vocab_path,
                format!("the special token {token:?} is not in the vocabulary"),
            )
        })
    };
    let start_id = id_of(START_TOKEN)?;
    let end_id = id_of(END_TOKEN)?;
    let merges_text = std::fs::read_to_string(&merges_path)
        .map_err(|e| fail(&merges_path, format!("unreadable: {e}")))?;
    let mut merges = Vec::new();
    for (number, line) in merges_text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.starts_with("#version") && !line.trim().is_empty())
        .take(MERGES_USED)
    {
        let (left, right) = line.split_once(' ').ok_or_else(|| {
            fail(
                &merges_path,
                format!("line {} is not two tokens: {line:?}", number + 1),
            )
        })?;
        merges.push(json!([left, right]));
    }
    let special = |id: u64, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let definition = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(start_id, START_TOKEN), special(end_id, END_TOKEN)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": [END_TOKEN, end_id],
            "cls": [START_TOKEN, start_id], "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
            "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": END_TOKEN,
            "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    definition
        .to_string()
        .parse::<tokenizers::Tokenizer>()
        .map(Some)
        .map_err(|e| {
            fail(
                dir,
                format!("vocab.json and merges.txt make no tokenizer: {e}"),
            )
        })
}
