//! FLUX.1 schnell and dev (Black Forest Labs' files, GGUF transformers): its facts and its
//! place behind the family interface, over `models::flux` (weights) and `pipeline::flux`
//! (the loop).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::{
    folder_name, time_forwards, Capabilities, DenoiserFootprint, EncodedPrompt, FamilyModel,
    GuidanceKind, Loaded, LoadedModel, ModelDefaults, ModelInfo, PartWeights, Plan,
};
use crate::models::component::{Component, ModelWeights};
use crate::models::error::ModelError;
use crate::models::flux::{FluxModel, FluxVariant, FLUX_PATCH_PX};
use crate::models::vae::VaeTiling;
use crate::models::weights::WeightCount;
use crate::pipeline::noise::NoiseSource;
use crate::pipeline::preview::{latent_preview, FLUX_PREVIEW};
use crate::pipeline::request::{GenerateRequest, RequestError};
use crate::pipeline::result::{Denoised, Generated};
use crate::pipeline::{flux, PipelineError, StageTimings, StepObserver};
use crate::schedulers::SamplerKind;

/// FLUX.1: a folder whose `model_index.json` names a FLUX pipeline.
impl FamilyModel for FluxModel {
    fn recognizes(dir: &Path) -> bool {
        FluxModel::is_flux_folder(dir)
    }

    fn from_configs(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        FluxModel::open(dir, device, dtype)
    }

    fn facts(&self) -> ModelInfo {
        info_of(self)
    }
}

/// The facts of an opened (not loaded) FLUX folder.
fn info_of(model: &FluxModel) -> ModelInfo {
    let (family, guidance) = match model.variant {
        FluxVariant::Schnell => ("FLUX.1 [schnell]", GuidanceKind::None),
        FluxVariant::Dev => ("FLUX.1 [dev]", GuidanceKind::Distilled),
    };
    let (steps, guidance_scale) = model.variant.default_steps_and_guidance();
    let json = &model.transformer_json;
    let footprint = DenoiserFootprint::joint_transformer(
        json.num_attention_heads as u64,
        model.variant.max_sequence_length() as u64,
        (json.num_attention_heads * json.attention_head_dim) as u64,
    );
    let weights_of = |components: &[Component]| -> WeightCount {
        components.iter().map(|c| model.file_weights(*c)).sum()
    };
    ModelInfo {
        dir: model.dir().to_path_buf(),
        name: folder_name(model.dir()),
        family,
        native_size_px: model.native_size_px(),
        size_multiple_px: FLUX_PATCH_PX,
        defaults: ModelDefaults {
            steps,
            guidance: guidance_scale,
            sampler: SamplerKind::Euler,
        },
        wants_its_defaults: true,
        capabilities: Capabilities {
            txt2img: true,
            img2img: true,
            inpaint: true,
            inpainting_model: false,
            edit_references: 0,
            controlnet: false,
            lora: false,
        },
        negative_prompt: false,
        sampler_choice: false,
        own_sampler: "flow-match Euler",
        guidance,
        footprint,
        weights: PartWeights {
            text: weights_of(&[Component::TextEncoder, Component::TextEncoder2]),
            denoiser: weights_of(&[Component::Transformer]),
            vae: weights_of(&[Component::Vae]),
        },
    }
}

impl LoadedModel for Loaded<FluxModel> {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn set_vae_tiling(&mut self, tiling: VaeTiling) {
        self.model.set_vae_tiling(tiling);
    }

    fn denoiser(&self) -> Component {
        Component::Transformer
    }

    fn check_inputs(&self, request: &GenerateRequest) -> Result<(u32, u32), RequestError> {
        flux::check_inputs(&self.model, request)
    }

    fn encode(
        &self,
        request: &GenerateRequest,
        _plan: &Plan,
        timings: &mut StageTimings,
    ) -> Result<EncodedPrompt, PipelineError> {
        // FLUX's prompt encoding depends on no choice of the plan (no guidance batch).
        flux::encode(&self.model, request, timings).map(EncodedPrompt::new)
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
        let prompt = prompt.get::<flux::EncodedPrompt>()?;
        flux::denoise(&self.model, request, plan, prompt, noise, observer, timings)
    }

    fn decode(
        &self,
        request: &GenerateRequest,
        denoised: Denoised,
    ) -> Result<Generated, PipelineError> {
        flux::decode(&self.model, request, denoised)
    }

    fn preview(&self, latents: &Tensor) -> candle_core::Result<RgbImage> {
        latent_preview(latents, &FLUX_PREVIEW)
    }

    fn latents_as_diffusers_records(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        flux::pack(latents)
    }

    fn has_quantized_denoiser(&self) -> bool {
        self.model.can_switch_to_quantized()
    }

    fn use_quantized_denoiser(&mut self, quantized: bool) {
        self.model.prefer_quantized(quantized);
    }

    fn time_denoiser_forward(
        &mut self,
        request: &GenerateRequest,
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
        let json = &model.transformer_json;
        let side = (size_px / 16) as usize;
        let text_len = request
            .max_sequence_length
            .unwrap_or_else(|| model.variant.max_sequence_length());
        let random = |shape: &[usize]| -> candle_core::Result<Tensor> {
            Tensor::randn(0f32, 1.0, shape, &device)?.to_dtype(dtype)
        };
        let latents = random(&[1, side * side, json.in_channels])?;
        let ids: Vec<f32> = (0..side)
            .flat_map(|r| (0..side).flat_map(move |c| [0.0, r as f32, c as f32]))
            .collect();
        let img_ids = Tensor::from_vec(ids, (1, side * side, 3), &device)?.to_dtype(dtype)?;
        let text = random(&[1, text_len, json.joint_attention_dim])?;
        let text_ids = Tensor::zeros((1, text_len, 3), dtype, &device)?;
        let pooled = random(&[1, json.pooled_projection_dim])?;
        let timestep = Tensor::full(0.9f32, 1, &device)?.to_dtype(dtype)?;
        let guidance = Tensor::full(request.guidance as f32, 1, &device)?.to_dtype(dtype)?;
        let guidance = json.guidance_embeds.then_some(&guidance);
        time_forwards(runs, || {
            transformer.forward(
                &latents, &img_ids, &text, &text_ids, &timestep, &pooled, guidance,
            )
        })
    }
}
