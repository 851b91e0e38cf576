//! A candle `VarBuilder` backend that reads each tensor from its safetensors file when a
//! model asks for it, instead of mapping the whole file.
//!
//! A mapped file counts towards the process's resident memory for as long as it stays mapped,
//! so loading from a map held the weights twice (the map and the copies) until the load ended.
//! Reading tensor by tensor keeps the extra memory to one tensor, and unloading gives back
//! everything loaded.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// Where one tensor lies.
#[derive(Debug, Clone)]
pub struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Byte offset of the data in the file.
    offset: u64,
    len: usize,
}

/// The tensors of a component's safetensors files, read on demand.
pub struct TensorReader {
    files: Vec<(PathBuf, Mutex<std::fs::File>)>,
    entries: HashMap<String, Entry>,
}

impl TensorReader {
    /// Indexes `files` (each already checked by `check_safetensors`) from their headers.
    pub fn open(files: &[PathBuf]) -> Result<Self, String> {
        let mut opened = Vec::with_capacity(files.len());
        let mut entries = HashMap::new();
        for (index, path) in files.iter().enumerate() {
            let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
            let file_len = file.metadata().map_err(|e| e.to_string())?.len();
            let (header, data_start) = read_header(&mut file)?;
            for (name, info) in header {
                if name == "__metadata__" {
                    continue;
                }
                let entry = entry_of(&info, index, data_start, file_len)
                    .map_err(|message| format!("tensor {name}: {message}"))?;
                entries.insert(name, entry);
            }
            opened.push((path.clone(), Mutex::new(file)));
        }
        Ok(Self {
            files: opened,
            entries,
        })
    }

    /// Bytes the floating-point tensors take on disk, and how many values they hold.
    pub fn float_extent(&self) -> (u64, u64) {
        self.entries
            .values()
            .filter(|entry| entry.dtype.is_float())
            .fold((0, 0), |(bytes, values), entry| {
                (
                    bytes + entry.len as u64,
                    values + entry.shape.iter().product::<usize>() as u64,
                )
            })
    }

    fn read(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let _weights = crate::engine::block_cache::HugePagesPaused::new();
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })?;
        let (path, file) = &self.files[entry.file];
        let mut file = file
            .lock()
            .map_err(|_| candle_core::Error::Msg("a weight file reader panicked".into()))?;
        file.seek(SeekFrom::Start(entry.offset))
            .map_err(|e| read_error(path, name, e))?;
        let file = &mut *file;
        // f32 values asked for in 16 bits are narrowed a chunk at a time as they are read, so
        // that a tensor is never held in both precisions (T5's 0.5 GB f32 embedding was).
        let narrowed = match (entry.dtype, dtype) {
            (DType::F32, DType::F16) => Some(read_narrowed(
                file,
                entry,
                easel_ops::weights::narrow_to_f16,
            )),
            (DType::F32, DType::BF16) => Some(read_narrowed(
                file,
                entry,
                easel_ops::weights::narrow_to_bf16,
            )),
            _ => None,
        };
        if let Some(narrowed) = narrowed {
            return narrowed
                .map_err(|e| read_error(path, name, e))??
                .to_device(device);
        }
        let on_cpu = match entry.dtype {
            DType::F32 => read_values::<f32>(file, entry),
            DType::F16 => read_values::<half::f16>(file, entry),
            DType::BF16 => read_values::<half::bf16>(file, entry),
            DType::F64 => read_values::<f64>(file, entry),
            DType::I64 => read_values::<i64>(file, entry),
            DType::U32 => read_values::<u32>(file, entry),
            _ => read_values::<u8>(file, entry),
        }
        .map_err(|e| read_error(path, name, e))??;
        on_cpu.to_device(device)?.to_dtype(dtype)
    }
}

/// Reads one tensor's data straight into the vector that becomes its storage (safetensors
/// are little-endian, as every machine Easel runs on).
fn read_values<T: candle_core::WithDType + bytemuck::Pod>(
    file: &mut std::fs::File,
    entry: &Entry,
) -> std::io::Result<candle_core::Result<Tensor>> {
    // Allocated zeroed, not filled element by element (which `vec!` does for f16 and bf16, and
    // slowly in dev builds, where this crate is not optimised).
    let mut values: Vec<T> = bytemuck::zeroed_vec(entry.len / std::mem::size_of::<T>());
    file.read_exact(bytemuck::cast_slice_mut(&mut values))?;
    Ok(Tensor::from_vec(
        values,
        entry.shape.as_slice(),
        &Device::Cpu,
    ))
}

/// f32 values read through a small buffer this many at a time when narrowed.
const NARROWED_CHUNK_VALUES: usize = 1 << 20;

/// One f32 tensor's data read and narrowed to `H` chunk by chunk into the vector that becomes
/// its storage (the rounding `to_dtype` does: to nearest, ties to even).
fn read_narrowed<H: candle_core::WithDType + bytemuck::Pod>(
    file: &mut std::fs::File,
    entry: &Entry,
    narrow: fn(&mut [H], &[f32]),
) -> std::io::Result<candle_core::Result<Tensor>> {
    let len = entry.len / std::mem::size_of::<f32>();
    let mut values: Vec<H> = bytemuck::zeroed_vec(len);
    let mut chunk = vec![0f32; NARROWED_CHUNK_VALUES.min(len)];
    for narrowed in values.chunks_mut(NARROWED_CHUNK_VALUES) {
        let read = &mut chunk[..narrowed.len()];
        file.read_exact(bytemuck::cast_slice_mut(read))?;
        narrow(narrowed, read);
    }
    Ok(Tensor::from_vec(
        values,
        entry.shape.as_slice(),
        &Device::Cpu,
    ))
}

fn read_error(path: &std::path::Path, name: &str, error: std::io::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: reading {name}: {error}", path.display()))
}

impl SimpleBackend for TensorReader {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        expect_shape(self.read(name, dtype, device)?, shape, name)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.read(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// `tensor` when it has `shape`, else the error a `VarBuilder` reports for `name`.
pub fn expect_shape(tensor: Tensor, shape: Shape, name: &str) -> candle_core::Result<Tensor> {
    if tensor.shape() != &shape {
        return Err(candle_core::Error::UnexpectedShape {
            msg: format!("shape mismatch for {name}"),
            expected: shape,
            got: tensor.shape().clone(),
        }
        .bt());
    }
    Ok(tensor)
}

/// The JSON header of a safetensors file and where its data begins.
pub fn read_header(
    file: &mut std::fs::File,
) -> Result<(serde_json::Map<String, serde_json::Value>, u64), String> {
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| "the file is shorter than a safetensors header".to_string())?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len.saturating_sub(8) || header_len > 100 * 1024 * 1024 {
        return Err(format!(
            "the header claims {header_len} bytes but the file has {file_len}"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| format!("the header could not be read: {e}"))?;
    let header = serde_json::from_slice(&header)
        .map_err(|e| format!("the header is not valid JSON: {e}"))?;
    Ok((header, 8 + header_len))
}

/// Where one tensor of a header lies, checked: every size is computed without overflow, the
/// data's length matches its shape and dtype, and it lies inside the file of `file_len`
/// bytes (so nothing is allocated for data that is not there).
pub fn entry_of(
    info: &serde_json::Value,
    file: usize,
    data_start: u64,
    file_len: u64,
) -> Result<Entry, String> {
    let dtype = match info.get("dtype").and_then(|d| d.as_str()) {
        Some("F32") => DType::F32,
        Some("F16") => DType::F16,
        Some("BF16") => DType::BF16,
        Some("F64") => DType::F64,
        Some("I64") => DType::I64,
        Some("U32") => DType::U32,
        Some("U8") => DType::U8,
        other => return Err(format!("unsupported dtype {other:?}")),
    };
    let shape = info
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or("no shape")?
        .iter()
        .map(|d| {
            d.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or("a bad dimension")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let offsets = info
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .ok_or("no data offsets")?;
    let (start, end) = match (
        offsets.first().and_then(|o| o.as_u64()),
        offsets.get(1).and_then(|o| o.as_u64()),
    ) {
        (Some(start), Some(end)) if end >= start && offsets.len() == 2 => (start, end),
        _ => return Err("bad data offsets".into()),
    };
    let expected = shape
        .iter()
        .try_fold(1usize, |count, &d| count.checked_mul(d))
        .and_then(|count| count.checked_mul(dtype.size_in_bytes()))
        .ok_or_else(|| format!("its shape {shape:?} holds more bytes than any file can"))?;
    let len = usize::try_from(end - start).map_err(|_| "bad data offsets".to_string())?;
    if len != expected {
        return Err(format!(
            "{len} bytes of data for a {shape:?} {dtype:?} tensor of {expected}"
        ));
    }
    let (offset, stop) = match (data_start.checked_add(start), data_start.checked_add(end)) {
        (Some(offset), Some(stop)) => (offset, stop),
        _ => return Err("bad data offsets".into()),
    };
    if stop > file_len {
        return Err(format!(
            "the file is truncated: the data ends at byte {stop} but the file has {file_len}"
        ));
    }
    Ok(Entry {
        file,
        dtype,
        shape,
        offset,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_tensors_read_in_16_bits_round_as_to_dtype_does() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("weights.safetensors");
        // Past one chunk, with values that round up, down, to even, and overflow f16.
        let count = NARROWED_CHUNK_VALUES + 3;
        let mut values: Vec<f32> = (0..count)
            .map(|i| ((i as f32) * 0.618_034).sin() * 3.0)
            .collect();
        values[..4].copy_from_slice(&[1.000_488_3, 1.000_976_6, 70_000.0, -1e-9]);
        let stored = Tensor::from_vec(values, (count,), &Device::Cpu).expect("tensor");
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("w".to_string(), stored.clone())]),
            &path,
        )
        .expect("saved");
        let reader = TensorReader::open(&[path]).expect("opened");
        for dtype in [DType::F16, DType::BF16, DType::F32] {
            let read = reader.read("w", dtype, &Device::Cpu).expect("read");
            let expected = stored.to_dtype(dtype).expect("narrowed");
            assert_eq!(read.dtype(), dtype);
            let bits = |t: &Tensor| {
                t.to_dtype(DType::F32)
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("values")
                    .into_iter()
                    .map(f32::to_bits)
                    .collect::<Vec<_>>()
            };
            assert!(bits(&read) == bits(&expected), "{dtype:?}");
        }
    }
}
