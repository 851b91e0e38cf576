//! The FLUX.2 transformer from a GGUF quantization (`leejet/FLUX.2-klein-4B-GGUF`'s
//! `flux-2-klein-4b-Q4_0.gguf` and `-Q8_0.gguf`, or any file converted the same way): each
//! diffusers name the transformer asks for is answered from the file's own tensors, named as
//! in Black Forest Labs' single file (optionally under `model.diffusion_model.`) or as in the
//! diffusers folder. Quantized blocks run along a row, so q, k and v are cut from the stacked
//! `qkv` rows, and `norm_out`'s halves swapped, on the stored bytes, without dequantizing.

use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{ggml_file::qtensor_from_ggml, gguf_file, QTensor};
use candle_core::Device;

use super::error::ModelError;
use super::flux2_bfl::bfl_source;
use super::gguf_check::check_gguf;
use super::renamed_tensors::Source;

/// Prefixes that converters put before the transformer's own names.
const PREFIXES: [&str; 4] = [
    "",
    "model.diffusion_model.",
    "diffusion_model.",
    "transformer.",
];

/// How the file names its tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Naming {
    /// Black Forest Labs' names (`double_blocks.0.img_attn.qkv.weight`) after this prefix.
    Bfl(&'static str),
    /// diffusers' names (`transformer_blocks.0.attn.to_q.weight`) after this prefix.
    Diffusers(&'static str),
}

/// An opened GGUF transformer: its header read, tensors read when asked for.
#[derive(Debug)]
pub struct GgufTransformer {
    path: PathBuf,
    content: gguf_file::Content,
    naming: Naming,
    inner: usize,
    device: Device,
    /// The last stacked tensor rows were cut from: q, k and v come from one `qkv` each, so
    /// it is read once, not three times.
    last_stacked: RefCell<Option<(String, QTensor)>>,
}

impl GgufTransformer {
    /// Reads the header of `path` (checked first) for a transformer `inner` wide whose
    /// tensors will go to `device`.
    pub fn open(path: &Path, inner: usize, device: &Device) -> Result<Self, ModelError> {
        check_gguf(path)?;
        let bad = |message: String| ModelError::BadWeights {
            path: path.to_path_buf(),
            message,
        };
        let mut file = File::open(path).map_err(|e| ModelError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| bad(e.to_string()))?;
        let naming = naming_of(&content).ok_or_else(|| {
            bad(
                "it holds no FLUX.2 transformer (neither `img_in.weight` nor \
                 `x_embedder.weight` is in it); is it another model's GGUF?"
                    .into(),
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            naming,
            inner,
            device: device.clone(),
            last_stacked: RefCell::new(None),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The quantized tensor that the diffusers-named `name` stands for, on the device.
    pub fn tensor(&self, name: &str) -> candle_core::Result<QTensor> {
        let missing = || candle_core::Error::CannotFindTensor {
            path: format!("{name} (not in {})", self.path.display()),
        };
        let on_cpu = match &self.naming {
            Naming::Diffusers(prefix) => self.read(&format!("{prefix}{name}"))?,
            Naming::Bfl(prefix) => match bfl_source(name, self.inner).ok_or_else(missing)? {
                Source::Whole(bfl) => self.read(&format!("{prefix}{bfl}"))?,
                Source::Rows(bfl, start, len) => {
                    let name = format!("{prefix}{bfl}");
                    let mut last = self.last_stacked.borrow_mut();
                    if last.as_ref().is_none_or(|(read, _)| *read != name) {
                        *last = Some((name.clone(), self.read(&name)?));
                    }
                    let Some((_, whole)) = last.as_ref() else {
                        unreachable!("read above")
                    };
                    rows(whole, &[(start, len)])?
                }
                Source::SwappedHalves(bfl) => {
                    let whole = self.read(&format!("{prefix}{bfl}"))?;
                    let half = whole.shape().dims()[0] / 2;
                    rows(&whole, &[(half, half), (0, half)])?
                }
            },
        };
        if self.device.is_cpu() {
            return Ok(on_cpu);
        }
        qtensor_from_ggml(
            on_cpu.dtype(),
            &on_cpu.data()?,
            on_cpu.shape().dims().to_vec(),
            &self.device,
        )
    }

    /// A tensor of the file, as stored, in memory.
    fn read(&self, name: &str) -> candle_core::Result<QTensor> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(candle_core::Error::CannotFindTensor {
                path: format!("{name} (not in {})", self.path.display()),
            });
        }
        let mut file = File::open(&self.path)?;
        self.content.tensor(&mut file, name, &Device::Cpu)
    }
}

/// The naming of the file, found from the tensor that every FLUX.2 transformer has first.
fn naming_of(content: &gguf_file::Content) -> Option<Naming> {
    let has = |name: String| content.tensor_infos.contains_key(&name);
    PREFIXES.iter().find_map(|prefix| {
        if has(format!("{prefix}img_in.weight")) {
            Some(Naming::Bfl(prefix))
        } else if has(format!("{prefix}x_embedder.weight")) {
            Some(Naming::Diffusers(prefix))
        } else {
            None
        }
    })
}

/// The rows `ranges` of a 2-D quantized tensor, in that order, as a new tensor on the CPU.
/// GGUF blocks never cross a row, so a row's bytes are a contiguous run of whole blocks.
fn rows(tensor: &QTensor, ranges: &[(usize, usize)]) -> candle_core::Result<QTensor> {
    let (row_count, columns) = tensor.shape().dims2()?;
    let dtype = tensor.dtype();
    if columns % dtype.block_size() != 0 {
        candle_core::bail!(
            "rows of {columns} values do not hold whole {dtype:?} blocks of {}",
            dtype.block_size()
        );
    }
    let row_bytes = columns / dtype.block_size() * dtype.type_size();
    let data = tensor.data()?;
    let mut picked = Vec::with_capacity(ranges.iter().map(|(_, len)| len * row_bytes).sum());
    let mut picked_rows = 0;
    for &(start, len) in ranges {
        if start + len > row_count {
            candle_core::bail!("rows {start}..{} of a tensor of {row_count}", start + len);
        }
        picked.extend_from_slice(&data[start * row_bytes..(start + len) * row_bytes]);
        picked_rows += len;
    }
    qtensor_from_ggml(dtype, &picked, vec![picked_rows, columns], &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::Tensor;

    #[test]
    fn rows_cut_from_quantized_bytes_equal_the_rows_of_the_dequantized_tensor() {
        let device = Device::Cpu;
        let values = Tensor::randn(0f32, 1.0, (6, 64), &device).expect("values");
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::F16] {
            let quantized = QTensor::quantize(&values, dtype).expect("quantize");
            let whole = quantized.dequantize(&device).expect("dequantize");
            let picked = rows(&quantized, &[(4, 2), (1, 2)]).expect("rows");
            assert_eq!(picked.shape().dims(), [4, 64]);
            let expected = Tensor::cat(
                &[
                    whole.narrow(0, 4, 2).expect("narrow"),
                    whole.narrow(0, 1, 2).expect("narrow"),
                ],
                0,
            )
            .expect("cat");
            let difference = (picked.dequantize(&device).expect("dequantize") - expected)
                .expect("sub")
                .abs()
                .expect("abs")
                .max_all()
                .expect("max")
                .to_scalar::<f32>()
                .expect("scalar");
            assert_eq!(difference, 0.0, "{dtype:?}");
        }
    }

    #[test]
    fn rows_past_the_end_are_an_error_not_a_panic() {
        let values = Tensor::zeros((2, 32), candle_core::DType::F32, &Device::Cpu).expect("zeros");
        let quantized = QTensor::quantize(&values, GgmlDType::Q8_0).expect("quantize");
        assert!(rows(&quantized, &[(1, 2)]).is_err());
    }
}
