//! Finding a component's weight files and mapping them into a candle `VarBuilder`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::error::ModelError;
use super::tensor_reader::{entry_of, read_header, TensorReader};

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

/// A `VarBuilder` over the files that reads each tensor when the model asks for it and
/// converts it to `dtype` on `device` (see `tensor_reader` for why it does not map them).
///
/// A truncated or malformed file is reported here, naming it.
pub fn weights_var_builder(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, ModelError> {
    let reader = checked_reader(files)?;
    Ok(VarBuilder::from_backend(
        Box::new(reader),
        dtype,
        device.clone(),
    ))
}

/// The tensors of `files`, each file's header checked first so that an error names the bad
/// one.
pub fn checked_reader(files: &[PathBuf]) -> Result<TensorReader, ModelError> {
    for file in files {
        check_safetensors(file)?;
    }
    TensorReader::open(files).map_err(|message| ModelError::BadWeights {
        path: files.first().cloned().unwrap_or_default(),
        message,
    })
}

/// Reads a safetensors header and checks that the file is as long as it says.
fn check_safetensors(path: &Path) -> Result<(), ModelError> {
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
    let (header, data_start) = read_header(&mut file).map_err(bad)?;
    for (name, info) in header
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
    {
        entry_of(info, 0, data_start, file_len)
            .map_err(|message| bad(format!("tensor {name}: {message}")))?;
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

/// What weight files hold, for memory estimates: floating-point values, held at whatever
/// precision a model loads them in, and bytes held as they are stored (quantized blocks,
/// integer tensors, headers, files that are not safetensors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WeightCount {
    /// Floating-point values.
    pub float_values: u64,
    /// Bytes held as stored.
    pub stored_bytes: u64,
}

impl WeightCount {
    /// Bytes once loaded with floating-point values of `bytes_per_value`.
    pub fn held_bytes(&self, bytes_per_value: u64) -> u64 {
        self.float_values * bytes_per_value + self.stored_bytes
    }
}

impl std::ops::Add for WeightCount {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            float_values: self.float_values + other.float_values,
            stored_bytes: self.stored_bytes + other.stored_bytes,
        }
    }
}

impl std::iter::Sum for WeightCount {
    fn sum<I: Iterator<Item = Self>>(counts: I) -> Self {
        counts.fold(Self::default(), |total, count| total + count)
    }
}

/// What `files` hold, read from their headers (a file whose header can't be read, a GGUF
/// for one, counts as stored bytes).
pub fn files_weights(files: &[PathBuf]) -> WeightCount {
    let on_disk = files_bytes(files);
    match TensorReader::open(files) {
        Ok(reader) => {
            let (float_on_disk, float_values) = reader.float_extent();
            WeightCount {
                float_values,
                stored_bytes: on_disk.saturating_sub(float_on_disk),
            }
        }
        Err(_) => WeightCount {
            float_values: 0,
            stored_bytes: on_disk,
        },
    }
}

/// Bytes `files` take once loaded with their floating-point tensors held at `dtype` (headers
/// and other tensors as on disk): their size on disk when that is the files' own dtype.
pub fn held_bytes(files: &[PathBuf], dtype: DType) -> u64 {
    files_weights(files).held_bytes(dtype.size_in_bytes() as u64)
}

/// The total size of `files` in bytes (files that can't be read count 0).
pub fn files_bytes(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// The first `*.gguf` at the folder's top, by name.
pub fn find_gguf(dir: &Path) -> Option<PathBuf> {
    let mut candidates = files_with_extension(dir, "gguf");
    candidates.sort();
    candidates.into_iter().next()
}

/// The files at the folder's top whose extension is `extension`.
pub fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == extension))
                .collect()
        })
        .unwrap_or_default()
}
