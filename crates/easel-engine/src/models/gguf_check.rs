//! A GGUF file's header walked before candle reads it. candle trusts some of its numbers (a
//! `general.alignment` of 0 divides by zero; a tensor's element count can overflow), so a
//! damaged or hostile file would abort the process. Here every length is checked against
//! what is left of the file, without allocating for it.

use std::io::{BufReader, Read, Seek};
use std::path::Path;

use super::error::ModelError;

/// More elements than any tensor of any real model (a trillion).
const MAX_TENSOR_ELEMENTS: u64 = 1 << 40;
/// More dimensions than GGUF tensors have.
const MAX_DIMENSIONS: u32 = 8;
/// Deeper than any real metadata array.
const MAX_NESTING: usize = 4;

/// Refuses a GGUF whose header candle could not read safely, naming the file and the key.
pub fn check_gguf(path: &Path) -> Result<(), ModelError> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = Reader {
        inner: BufReader::new(file),
        file_len,
    };
    walk(&mut reader).map_err(|message| ModelError::BadWeights {
        path: path.to_path_buf(),
        message: format!("the GGUF header is not usable: {message}"),
    })
}

struct Reader {
    inner: BufReader<std::fs::File>,
    file_len: u64,
}

impl Reader {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut buffer = [0u8; N];
        self.inner
            .read_exact(&mut buffer)
            .map_err(|_| "the file ends inside its header".to_string())?;
        Ok(buffer)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }

    fn remaining(&mut self) -> Result<u64, String> {
        let position = self.inner.stream_position().map_err(|e| e.to_string())?;
        Ok(self.file_len.saturating_sub(position))
    }

    /// Skips `count` bytes that must lie inside the file.
    fn skip(&mut self, count: u64, what: &str) -> Result<(), String> {
        if count > self.remaining()? {
            return Err(format!(
                "{what} claims {count} bytes, more than the file has left"
            ));
        }
        let step = i64::try_from(count).map_err(|_| format!("{what} is too long"))?;
        self.inner
            .seek_relative(step)
            .map_err(|e| format!("{what}: {e}"))
    }

    /// A length-prefixed string, its length checked against the file first.
    fn string(&mut self, long_lengths: bool, what: &str) -> Result<String, String> {
        let len = if long_lengths {
            self.u64()?
        } else {
            u64::from(self.u32()?)
        };
        if len > self.remaining()? || len > 1 << 26 {
            return Err(format!("{what} has an impossible length {len}"));
        }
        let mut text = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut text)
            .map_err(|_| "the file ends inside its header".to_string())?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }
}

/// Bytes of one value of a fixed-size GGUF type, `None` for strings and arrays.
fn fixed_size(value_type: u32) -> Result<Option<u64>, String> {
    Ok(match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        8 | 9 => None,
        other => return Err(format!("unknown value type {other}")),
    })
}

fn walk(reader: &mut Reader) -> Result<(), String> {
    if &reader.bytes::<4>()? != b"GGUF" {
        return Err("it does not start with GGUF".into());
    }
    let version = reader.u32()?;
    let long_lengths = match version {
        1 => false,
        2 | 3 => true,
        other => return Err(format!("version {other} is unknown")),
    };
    let count = |reader: &mut Reader| -> Result<u64, String> {
        if long_lengths {
            reader.u64()
        } else {
            reader.u32().map(u64::from)
        }
    };
    let tensor_count = count(reader)?;
    let metadata_count = count(reader)?;
    if tensor_count > reader.remaining()? || metadata_count > reader.remaining()? {
        return Err(format!(
            "it claims {tensor_count} tensors and {metadata_count} metadata entries, more than the file can hold"
        ));
    }
    for _ in 0..metadata_count {
        let key = reader.string(long_lengths, "a metadata key")?;
        let value_type = reader.u32()?;
        if key == "general.alignment" {
            let alignment = match value_type {
                0 | 1 => u64::from(reader.bytes::<1>()?[0]),
                2 | 3 => u64::from(u16::from_le_bytes(reader.bytes::<2>()?)),
                4 | 5 => u64::from(reader.u32()?),
                10 | 11 => reader.u64()?,
                _ => {
                    return Err(format!(
                        "general.alignment has value type {value_type}, not an integer"
                    ))
                }
            };
            if alignment == 0 || !alignment.is_power_of_two() || alignment > 1 << 20 {
                return Err(format!(
                    "general.alignment = {alignment}; it must be a power of two such as 32"
                ));
            }
            continue;
        }
        skip_value(reader, value_type, long_lengths, &key, 0)?;
    }
    for _ in 0..tensor_count {
        let name = reader.string(long_lengths, "a tensor name")?;
        let dimensions = reader.u32()?;
        if dimensions > MAX_DIMENSIONS {
            return Err(format!("tensor {name} has {dimensions} dimensions"));
        }
        let mut elements: u64 = 1;
        for _ in 0..dimensions {
            let size = if long_lengths {
                reader.u64()?
            } else {
                u64::from(reader.u32()?)
            };
            elements = elements
                .checked_mul(size)
                .filter(|&e| e <= MAX_TENSOR_ELEMENTS)
                .ok_or_else(|| format!("tensor {name} has an impossible shape"))?;
        }
        let _ggml_type = reader.u32()?;
        let _offset = reader.u64()?;
    }
    Ok(())
}

fn skip_value(
    reader: &mut Reader,
    value_type: u32,
    long_lengths: bool,
    key: &str,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_NESTING {
        return Err(format!("{key} nests arrays too deeply"));
    }
    if let Some(size) = fixed_size(value_type)? {
        return reader.skip(size, key);
    }
    if value_type == 8 {
        return reader.string(long_lengths, key).map(|_| ());
    }
    let element_type = reader.u32()?;
    let len = if long_lengths {
        reader.u64()?
    } else {
        u64::from(reader.u32()?)
    };
    match fixed_size(element_type)? {
        Some(size) => {
            let bytes = len
                .checked_mul(size)
                .ok_or_else(|| format!("{key} has an impossible length {len}"))?;
            reader.skip(bytes, key)
        }
        None => {
            if len > reader.remaining()? {
                return Err(format!("{key} has an impossible length {len}"));
            }
            for _ in 0..len {
                skip_value(reader, element_type, long_lengths, key, depth + 1)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v3 GGUF with one metadata entry and one 4x4 f32 tensor.
    fn gguf(alignment: u32, dims: [u64; 2]) -> Vec<u8> {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        let key = b"general.alignment";
        bytes.extend((key.len() as u64).to_le_bytes());
        bytes.extend(key);
        bytes.extend(4u32.to_le_bytes());
        bytes.extend(alignment.to_le_bytes());
        let name = b"w";
        bytes.extend((name.len() as u64).to_le_bytes());
        bytes.extend(name);
        bytes.extend(2u32.to_le_bytes());
        for d in dims {
            bytes.extend(d.to_le_bytes());
        }
        bytes.extend(0u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.resize(bytes.len().div_ceil(32) * 32 + 64, 0);
        bytes
    }

    fn checked(bytes: &[u8]) -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("t.gguf");
        std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
        check_gguf(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn a_sound_header_passes_and_hostile_ones_are_named() {
        assert_eq!(checked(&gguf(32, [4, 4])), Ok(()));
        let zero = checked(&gguf(0, [4, 4])).err().unwrap_or_default();
        assert!(zero.contains("general.alignment = 0"), "{zero}");
        let huge = checked(&gguf(32, [u64::MAX, 3])).err().unwrap_or_default();
        assert!(huge.contains("impossible shape"), "{huge}");
        let short = checked(&gguf(32, [4, 4])[..30]).err().unwrap_or_default();
        assert!(short.contains("ends inside"), "{short}");
        let not_gguf = checked(b"PK\x03\x04 a zip").err().unwrap_or_default();
        assert!(not_gguf.contains("GGUF"), "{not_gguf}");
    }
}
