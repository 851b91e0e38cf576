//! Replays a parity case (`../shared/parity/README.md`): the request, with diffusers' recorded
//! noise fed in its roles, compared against the golden image and step latents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};
use serde::Deserialize;

use crate::families::{generate, load_these};
use crate::pipeline::noise::{NoiseRole, RecordedNoise};
use crate::pipeline::request::{
    GenerateRequest, InpaintArea, InpaintOptions, Reference, SourceImage,
};
use crate::pipeline::{PipelineError, StageTimings, StepControl, StepObserver};
use crate::schedulers::SamplerKind;

/// Largest allowed difference of the output image (0..1 scale).
pub const IMAGE_TOLERANCE: f32 = 2e-3;
/// Largest allowed difference of any step's latents.
pub const LATENT_TOLERANCE: f32 = 1e-3;

/// A case's request as its JSON writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct CaseSpec {
    /// The model folder name under the models directory.
    pub model: String,
    /// txt2img, img2img or inpaint.
    pub mode: String,
    /// Sampler name.
    pub scheduler: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Inference steps.
    pub steps: usize,
    /// Guidance scale.
    pub guidance: f64,
    /// img2img / inpaint strength.
    #[serde(default)]
    pub strength: Option<f64>,
    /// The prompt.
    pub prompt: String,
    /// The negative prompt (absent differs from empty).
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// Every noise draw diffusers made, in order.
    #[serde(default)]
    pub noise_draws: Vec<NoiseDraw>,
    /// FLUX: the T5 padding length.
    #[serde(default)]
    pub max_sequence_length: Option<usize>,
    /// The timesteps diffusers ran (one per step actually taken).
    #[serde(default)]
    pub timesteps: Vec<f64>,
    /// Edit references (mode `edit`), in order.
    #[serde(default)]
    pub references: Vec<ReferenceSpec>,
}

/// One edit reference of a case.
#[derive(Debug, Clone, Deserialize)]
pub struct ReferenceSpec {
    /// The picture's key in the case's safetensors (`[H, W, 3]` in 0..1).
    pub key: String,
}

/// One recorded draw.
#[derive(Debug, Clone, Deserialize)]
pub struct NoiseDraw {
    /// The tensor's key in the case's safetensors.
    pub key: String,
    /// The diffusers function that drew it.
    pub drawn_in: String,
}

/// A case that could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The case files are missing or malformed.
    #[error("parity case {path}: {message}")]
    Case {
        /// The case JSON (or its tensors).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// How far Easel's run is from the golden.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Case name (file stem).
    pub name: String,
    /// Max absolute difference of the output image.
    pub image_max_diff: f32,
    /// Max absolute difference of each step's latents.
    pub step_max_diffs: Vec<f32>,
    /// Easel's raw decoded image.
    pub image: RgbImage,
    /// Time the run took.
    pub elapsed: Duration,
}

impl ReplayReport {
    /// Whether every difference is within the README's tolerance.
    pub fn passed(&self) -> bool {
        self.image_max_diff <= IMAGE_TOLERANCE
            && self.step_max_diffs.len()
                == self
                    .step_max_diffs
                    .iter()
                    .filter(|d| **d <= LATENT_TOLERANCE)
                    .count()
    }
}

/// A loaded case: its request and tensors.
#[derive(Debug)]
pub struct ParityCase {
    /// Case name (file stem).
    pub name: String,
    /// The request fields.
    pub spec: CaseSpec,
    tensors: BTreeMap<String, Tensor>,
    path: PathBuf,
}

impl ParityCase {
    /// Reads `NAME.json` and `NAME.safetensors`.
    pub fn load(json_path: &Path) -> Result<Self, ReplayError> {
        let case_error = |message: String| ReplayError::Case {
            path: json_path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(json_path).map_err(|e| case_error(e.to_string()))?;
        let spec: CaseSpec = serde_json::from_str(&text).map_err(|e| case_error(e.to_string()))?;
        let tensor_path = json_path.with_extension("safetensors");
        let tensors = candle_core::safetensors::load(&tensor_path, &Device::Cpu)
            .map_err(|e| case_error(format!("{}: {e}", tensor_path.display())))?;
        let name = json_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            name,
            spec,
            tensors: tensors.into_iter().collect(),
            path: json_path.to_path_buf(),
        })
    }

    fn tensor(&self, key: &str) -> Result<&Tensor, ReplayError> {
        self.tensors.get(key).ok_or_else(|| ReplayError::Case {
            path: self.path.clone(),
            message: format!("the tensor {key} is missing"),
        })
    }

    /// The request the case describes, with paste-back off (the golden is the raw decode).
    pub fn request(&self, models_dir: &Path) -> Result<GenerateRequest, ReplayError> {
        let spec = &self.spec;
        // FLUX always samples with flow-matching Euler; the SD sampler field is unused then.
        let sampler = match spec.scheduler.as_str() {
            "flow_match_euler" => SamplerKind::Euler,
            name => SamplerKind::from_name(name).ok_or_else(|| ReplayError::Case {
                path: self.path.clone(),
                message: format!("unknown scheduler {name}"),
            })?,
        };
        let source = match spec.mode.as_str() {
            "txt2img" | "edit" => None,
            "img2img" | "inpaint" => {
                let image = rgb_from_unit(self.tensor("input.init_image")?)?;
                let mask = if spec.mode == "inpaint" {
                    Some(gray_from_unit(self.tensor("input.mask")?)?)
                } else {
                    None
                };
                Some(SourceImage {
                    image,
                    strength: spec.strength.unwrap_or(1.0),
                    mask,
                    feather_px: 0,
                })
            }
            other => {
                return Err(ReplayError::Case {
                    path: self.path.clone(),
                    message: format!("unknown mode {other}"),
                })
            }
        };
        Ok(GenerateRequest {
            model: models_dir.join(&spec.model),
            prompt: spec.prompt.clone(),
            negative_prompt: spec.negative_prompt.clone(),
            sampler,
            steps: spec.steps,
            guidance: spec.guidance,
            seed: 0,
            width: Some(spec.width),
            height: Some(spec.height),
            references: source
                .map(Reference::Init)
                .into_iter()
                .map(Ok)
                .chain(spec.references.iter().map(|reference| {
                    Ok(Reference::Edit {
                        image: rgb_from_unit(self.tensor(&reference.key)?)?,
                        name: reference.key.clone(),
                    })
                }))
                .collect::<Result<Vec<_>, ReplayError>>()?,
            adapters: Vec::new(),
            paste_back: false,
            // diffusers paints the whole image and matches no colours.
            inpaint: InpaintOptions {
                area: InpaintArea::Whole,
                match_colours: false,
                ..InpaintOptions::default()
            },
            max_sequence_length: spec.max_sequence_length,
        })
    }

    /// The recorded noise, by role.
    pub fn noise(&self) -> Result<RecordedNoise, ReplayError> {
        let mut noise = RecordedNoise::default();
        for draw in &self.spec.noise_draws {
            let role = NoiseRole::from_diffusers_name(&draw.drawn_in).ok_or_else(|| {
                ReplayError::Case {
                    path: self.path.clone(),
                    message: format!("noise drawn in unknown place {}", draw.drawn_in),
                }
            })?;
            noise.push(role, self.tensor(&draw.key)?.clone());
        }
        Ok(noise)
    }

    /// Runs the case on `device` with the models in `models_dir`, weights in f32.
    pub fn run(&self, models_dir: &Path, device: &Device) -> Result<ReplayReport, ReplayError> {
        self.run_with_weights(models_dir, device, DType::F32)
    }

    /// Runs the case on `device` with the models in `models_dir`, weights held at `dtype`.
    pub fn run_with_weights(
        &self,
        models_dir: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<ReplayReport, ReplayError> {
        let request = self.request(models_dir)?;
        let mut model =
            crate::families::open(&request.model, device, dtype).map_err(PipelineError::from)?;
        let started = std::time::Instant::now();
        let mut timings = StageTimings::default();
        let components = model.components();
        load_these(model.as_mut(), &components, &mut timings, &mut |_, _| {})?;
        let mut noise = self.noise()?;
        let mut recorder = LatentRecorder::default();
        let generated = generate(model.as_ref(), &request, &mut noise, &mut recorder, timings)?;
        let golden = self.tensor("output.image")?;
        let image_max_diff = max_abs_diff(&generated.decoded, golden)?;
        let mut step_max_diffs = Vec::with_capacity(recorder.latents.len());
        for (index, latents) in recorder.latents.iter().enumerate() {
            let key = format!("debug.latents_after_step.{index:02}");
            // FLUX's goldens hold packed step latents; Easel reports them unpacked.
            let latents = model
                .latents_as_diffusers_records(latents)
                .map_err(PipelineError::from)?;
            step_max_diffs.push(max_abs_diff(&latents, self.tensor(&key)?)?);
        }
        Ok(ReplayReport {
            name: self.name.clone(),
            image_max_diff,
            step_max_diffs,
            image: generated.image,
            elapsed: started.elapsed(),
        })
    }
}

#[derive(Default)]
struct LatentRecorder {
    latents: Vec<Tensor>,
}

impl StepObserver for LatentRecorder {
    fn before_step(&mut self, _done: usize, _total: usize) -> StepControl {
        StepControl::Continue
    }

    fn after_step(&mut self, _done: usize, _total: usize, latents: &Tensor, _elapsed: Duration) {
        self.latents.push(latents.clone());
    }
}

fn max_abs_diff(ours: &Tensor, golden: &Tensor) -> Result<f32, ReplayError> {
    let compute = |e: candle_core::Error| ReplayError::Pipeline(PipelineError::from(e));
    let ours = ours.to_device(&Device::Cpu).map_err(compute)?;
    let ours = ours.reshape(golden.shape()).map_err(compute)?;
    (ours - golden)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .map_err(compute)
}

fn unit_bytes(t: &Tensor) -> Result<Vec<u8>, ReplayError> {
    let values = t
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| ReplayError::Pipeline(PipelineError::from(e)))?;
    Ok(values
        .into_iter()
        .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect())
}

fn rgb_from_unit(t: &Tensor) -> Result<RgbImage, ReplayError> {
    let (h, w, _) = t
        .dims3()
        .map_err(|e| ReplayError::Pipeline(PipelineError::from(e)))?;
    RgbImage::from_raw(w as u32, h as u32, unit_bytes(t)?).ok_or_else(|| ReplayError::Case {
        path: PathBuf::new(),
        message: "input.init_image is not [H, W, 3]".into(),
    })
}

fn gray_from_unit(t: &Tensor) -> Result<GrayImage, ReplayError> {
    let (h, w) = t
        .dims2()
        .map_err(|e| ReplayError::Pipeline(PipelineError::from(e)))?;
    GrayImage::from_raw(w as u32, h as u32, unit_bytes(t)?).ok_or_else(|| ReplayError::Case {
        path: PathBuf::new(),
        message: "input.mask is not [H, W]".into(),
    })
}
