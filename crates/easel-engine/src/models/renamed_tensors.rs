//! A `VarBuilder` backend over a file that names (and sometimes stacks) its tensors otherwise
//! than the layers ask for them: each asked name is mapped to its `Source` in the file, read
//! there, and cut or rearranged as the mapping says. Black Forest Labs' single files (FLUX.2's
//! transformer, FLUX.1's autoencoder) are read through it under diffusers' names.

use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::error::ModelError;
use super::tensor_reader::{expect_shape, TensorReader};
use super::weights::checked_reader;

/// Where an asked-for tensor comes from in the file.
pub(crate) enum Source {
    /// The whole tensor of this name.
    Whole(String),
    /// Rows `start..start + len` of this tensor.
    Rows(String, usize, usize),
    /// This tensor with its two row halves swapped.
    SwappedHalves(String),
}

impl Source {
    /// The file's tensor it reads.
    fn stored_name(&self) -> &str {
        match self {
            Source::Whole(name) | Source::Rows(name, _, _) | Source::SwappedHalves(name) => name,
        }
    }
}

/// A `VarBuilder` over `file` whose tensors `source` maps asked names to (`None` for names the
/// file has no tensor for); `stored` says what the file holds, for the error a name it lacks
/// gives ("BFL tensor": "x (no BFL tensor maps to it)").
pub(crate) fn renamed_var_builder(
    file: &Path,
    source: impl Fn(&str) -> Option<Source> + Send + Sync + 'static,
    stored: &'static str,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, ModelError> {
    let reader = checked_reader(&[file.to_path_buf()])?;
    Ok(VarBuilder::from_backend(
        Box::new(Renamed {
            reader,
            source,
            stored,
        }),
        dtype,
        device.clone(),
    ))
}

struct Renamed<F> {
    reader: TensorReader,
    source: F,
    stored: &'static str,
}

impl<F: Fn(&str) -> Option<Source> + Send + Sync> SimpleBackend for Renamed<F> {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        expect_shape(self.get_unchecked(name, dtype, device)?, shape, name)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let source = (self.source)(name).ok_or_else(|| candle_core::Error::CannotFindTensor {
            path: format!("{name} (no {} maps to it)", self.stored),
        })?;
        let tensor = self
            .reader
            .get_unchecked(source.stored_name(), dtype, device)?;
        match source {
            Source::Whole(_) => Ok(tensor),
            Source::Rows(_, start, len) => tensor.narrow(0, start, len)?.contiguous(),
            Source::SwappedHalves(_) => {
                let half = tensor.dim(0)? / 2;
                Tensor::cat(
                    &[tensor.narrow(0, half, half)?, tensor.narrow(0, 0, half)?],
                    0,
                )
            }
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        (self.source)(name).is_some_and(|source| self.reader.contains_tensor(source.stored_name()))
    }
}
