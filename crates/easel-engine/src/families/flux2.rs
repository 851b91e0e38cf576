//! FLUX.2 [klein] (4B, 9B and the base models, diffusers layout): its facts and its place
//! behind the family interface, over `models::flux2` (weights) and `pipeline::flux2` (the
//! loop).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::{
    folder_name, Capabilities, DenoiserFootprint, EncodedPrompt, FamilyModel, GuidanceKind, Loaded,
    LoadedModel, ModelDefaults, ModelInfo, PartWeights, Plan,
};
use crate::models::component::{Component, ModelWeights};
use crate::models::error::ModelError;
use crate::models::flux2::{Flux2Model, FLUX2_PATCH_PX, MAX_SEQUENCE_LENGTH};
use crate::models::flux2_latents::pack;
use crate::pipeline::flux2::{self, MAX_REFERENCES};
use crate::pipeline::noise::NoiseSource;
use crate::pipeline::preview::{latent_preview, FLUX2_PREVIEW};
use crate::pipeline::request::{GenerateRequest, RequestError};
use crate::pipeline::result::{Denoised, Generated};
use crate::pipeline::{PipelineError, StageTimings, StepObserver};
use crate::schedulers::SamplerKind;

/// FLUX.2: a folder whose `model_index.json` names a FLUX.2 pipeline.
impl FamilyModel for Flux2Model {
    fn recognizes(dir: &Path) -> bool {
        Flux2Model::is_flux2_folder(dir)
    }

    fn from_configs(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        Flux2Model::open(dir, device, dtype)
    }

    fn facts(&self) -> ModelInfo {
        info_of(self)
    }
}

/// The facts of an opened (not loaded) FLUX.2 folder.
fn info_of(model: &Flux2Model) -> ModelInfo {
    let distilled = model.index.is_distilled;
    let (family, guidance, defaults) = if distilled {
        (
            "FLUX.2 [klein]",
            GuidanceKind::None,
            ModelDefaults {
                steps: 4,
                guidance: 1.0,
                sampler: SamplerKind::Euler,
            },
        )
    } else {
        (
            "FLUX.2 [klein] base",
            GuidanceKind::ClassifierFree,
            ModelDefaults {
                steps: 50,
                guidance: 4.0,
                sampler: SamplerKind::Euler,
            },
        )
    };
    let config = &model.transformer_config;
    let inner = (config.num_attention_heads * config.attention_head_dim) as u64;
    let mut footprint = DenoiserFootprint::joint_transformer(
        config.num_attention_heads as u64,
        MAX_SEQUENCE_LENGTH as u64,
        inner,
    );
    if !distilled {
        footprint.batch = 2;
    }
    ModelInfo {
        dir: model.dir().to_path_buf(),
        name: folder_name(model.dir()),
        family,
        native_size_px: model.native_size_px(),
        size_multiple_px: FLUX2_PATCH_PX,
        defaults,
        wants_its_defaults: true,
        capabilities: Capabilities {
            txt2img: true,
            img2img: true,
            inpaint: true,
            inpainting_model: false,
            edit_references: MAX_REFERENCES,
            controlnet: false,
            lora: false,
        },
        negative_prompt: !distilled,
        sampler_choice: false,
        own_sampler: "flow-match Euler",
        guidance,
        footprint,
        weights: PartWeights {
            text: model.file_weights(Component::TextEncoder),
            denoiser: model.file_weights(Component::Transformer),
            vae: model.file_weights(Component::Vae),
        },
    }
}

impl LoadedModel for Loaded<Flux2Model> {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn denoiser(&self) -> Component {
        Component::Transformer
    }

    fn check_inputs(&self, request: &GenerateRequest) -> Result<(u32, u32), RequestError> {
        flux2::check_inputs(&self.model, request)
    }

    fn encode(
        &self,
        request: &GenerateRequest,
        plan: &Plan,
        timings: &mut StageTimings,
    ) -> Result<EncodedPrompt, PipelineError> {
        flux2::encode(&self.model, request, plan, timings).map(EncodedPrompt::new)
    }

    fn denoise(
        &self,
        request: &GenerateRequest,
        plan: &Plan,
        prompt: &EncodedPrompt,
        noise: &mut dyn NoiseSource,
        observer: &mut dyn StepObserver,
        timings: StageTimings,
    ) -> Result<Denoised, PipelineError> {
        let prompt = prompt.get::<flux2::EncodedPrompt>()?;
        flux2::denoise(&self.model, request, plan, prompt, noise, observer, timings)
    }

    fn decode(
        &self,
        request: &GenerateRequest,
        denoised: Denoised,
    ) -> Result<Generated, PipelineError> {
        flux2::decode(&self.model, request, denoised)
    }

    fn has_quantized_denoiser(&self) -> bool {
        self.model.can_switch_to_quantized()
    }

    fn use_quantized_denoiser(&mut self, quantized: bool) {
        self.model.prefer_quantized(quantized);
    }

    fn preview(&self, latents: &Tensor) -> candle_core::Result<RgbImage> {
        latent_preview(latents, &FLUX2_PREVIEW)
    }

    fn latents_as_diffusers_records(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        pack(latents)
    }

    fn time_denoiser_forward(
        &mut self,
        _request: &GenerateRequest,
        size_px: u32,
        runs: usize,
    ) -> Result<Vec<f64>, PipelineError> {
        let model = &mut self.model;
        model.load(Component::Transformer)?;
        let transformer = model
            .transformer()
            .ok_or(PipelineError::NotLoaded(Component::Transformer))?;
        let device = model.device().clone();
        let dtype = model.dtype();
        let config = &model.transformer_config;
        let side = (size_px / FLUX2_PATCH_PX) as usize;
        let random = |shape: &[usize]| -> candle_core::Result<Tensor> {
            Tensor::randn(0f32, 1.0, shape, &device)?.to_dtype(dtype)
        };
        let image = random(&[1, side * side, config.in_channels])?;
        let ids: Vec<f32> = (0..side)
            .flat_map(|r| (0..side).flat_map(move |c| [0.0, r as f32, c as f32, 0.0]))
            .collect();
        let image_ids = Tensor::from_vec(ids, (side * side, 4), &device)?;
        let text = random(&[1, MAX_SEQUENCE_LENGTH, config.joint_attention_dim])?;
        let text_ids = Tensor::zeros((MAX_SEQUENCE_LENGTH, 4), DType::F32, &device)?;
        super::time_forwards(runs, || {
            transformer.forward(&image, &image_ids, &text, &text_ids, 0.9)
        })
    }
}
