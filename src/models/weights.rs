//! Finding a component's weight files and mapping them into a candle `VarBuilder`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::error::ModelError;

/// File names diffusers and transformers write a component's weights under, best first.
const SINGLE_FILE_NAMES: [&str; 4] = [
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
];

/// The safetensors files holding one component: one file, or the shards an index lists.
pub fn component_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    for name in SINGLE_FILE_NAMES {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(vec![path]);
        }
    }
    for index_name in [
        "diffusion_pytorch_model.safetensors.index.json",
        "model.safetensors.index.json",
    ] {
        let index_path = dir.join(index_name);
        if index_path.is_file() {
            return shards_from_index(dir, &index_path);
        }
    }
    Err(ModelError::MissingFile {
        what: "weight file",
        path: dir.join(SINGLE_FILE_NAMES[0]),
    })
}

fn shards_from_index(dir: &Path, index_path: &Path) -> Result<Vec<PathBuf>, ModelError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let index: Index = super::config::read_json(index_path, "weight index")?;
    let names: BTreeSet<&String> = index.weight_map.values().collect();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                what: "weight shard",
                path,
            });
        }
        files.push(path);
    }
    Ok(files)
}

/// Maps the files into a `VarBuilder` that converts every tensor to `dtype` on `device`.
///
/// A truncated or malformed file is reported here, naming it.
pub fn mmap_var_builder(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, ModelError> {
    // Check each file on its own first so that the error names the bad one.
    for file in files {
        check_safetensors(file)?;
    }
    // SAFETY: the files are memory-mapped read-only. Easel never writes to model files while a
    // model is loaded; another program truncating them while mapped is outside what we guard.
    #[allow(unsafe_code)]
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) };
    vb.map_err(|e| ModelError::BadWeights {
        path: files.first().cloned().unwrap_or_default(),
        message: e.to_string(),
    })
}

/// Reads a safetensors header and checks that the file is as long as it says.
fn check_safetensors(path: &Path) -> Result<(), ModelError> {
    use std::io::Read;
    let bad = |message: String| ModelError::BadWeights {
        path: path.to_path_buf(),
        message,
    };
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let file_len = file
        .metadata()
        .map_err(|e| ModelError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| bad("the file is shorter than a safetensors header".into()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len.saturating_sub(8) || header_len > 100 * 1024 * 1024 {
        return Err(bad(format!(
            "the header claims {header_len} bytes but the file has {file_len}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(format!("the header could not be read: {e}")))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("the header is not valid JSON: {e}")))?;
    let data_len = header
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .filter_map(|(_, info)| info.get("data_offsets")?.as_array()?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let expected = 8 + header_len + data_len;
    if file_len < expected {
        return Err(bad(format!(
            "the file is truncated: {file_len} bytes of {expected}"
        )));
    }
    Ok(())
}

/// Wraps a candle error raised while building a component from its weights.
pub fn weights_error(files: &[PathBuf], config: &Path, error: candle_core::Error) -> ModelError {
    ModelError::BadWeights {
        path: files.first().cloned().unwrap_or_default(),
        message: format!("they do not match {}: {error}", config.display()),
    }
}
