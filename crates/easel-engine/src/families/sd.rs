//! Stable Diffusion 1.x, 2.x and SDXL (the diffusers layout): its facts and its place behind
//! the family interface, over `models::sd` (weights) and `pipeline::sd` (the loop).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::{
    folder_name, time_forwards, Capabilities, DenoiserFootprint, EncodedPrompt, FamilyModel,
    GuidanceKind, Loaded, LoadedModel, ModelDefaults, ModelInfo, PartWeights, Plan,
};
use crate::models::component::{Component, ModelWeights};
use crate::models::error::ModelError;
use crate::models::sd::{Family as Variant, SdModel};
use crate::models::unet::TextTimeConditioning;
use crate::models::vae::VaeTiling;
use crate::models::weights::WeightCount;
use crate::pipeline::noise::NoiseSource;
use crate::pipeline::preview::{latent_preview, SDXL_PREVIEW, SD_PREVIEW};
use crate::pipeline::request::{GenerateRequest, RequestError};
use crate::pipeline::result::{Denoised, Generated};
use crate::pipeline::{sd, PipelineError, StageTimings, StepObserver};
use crate::schedulers::SamplerKind;

/// What an artist starts from with a Stable Diffusion model that is not in the catalog.
const DEFAULTS: ModelDefaults = ModelDefaults {
    steps: 25,
    guidance: 7.5,
    sampler: SamplerKind::Dpmpp2mKarras,
};

/// Stable Diffusion: any diffusers folder that no other family claims.
impl FamilyModel for SdModel {
    fn recognizes(dir: &Path) -> bool {
        dir.join("unet/config.json").is_file()
    }

    fn from_configs(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        SdModel::open(dir, device, dtype)
    }

    fn facts(&self) -> ModelInfo {
        info_of(self)
    }
}

/// The facts of an opened (not loaded) Stable Diffusion folder.
fn info_of(model: &SdModel) -> ModelInfo {
    let inpainting_model = model.unet_shape.in_channels != model.vae_config.latent_channels;
    let family = match model.family {
        Variant::StableDiffusionXl => "Stable Diffusion XL",
        Variant::StableDiffusion if model.unet_shape.cross_attention_dim() >= 1024 => {
            "Stable Diffusion 2.x"
        }
        Variant::StableDiffusion => "Stable Diffusion 1.x",
    };
    // The attention at the first level that has it sets the activations' size: SD 1.x has 8
    // heads over every latent pixel, SD 2.x 5, SDXL none until the second level.
    let footprint = match model.unet_shape.first_attention_level() {
        Some((level, heads)) => DenoiserFootprint::unet(heads as u64, 1 << (2 * level)),
        None => DenoiserFootprint::unet(0, 1),
    };
    let weights_of = |components: &[Component]| -> WeightCount {
        components.iter().map(|c| model.file_weights(*c)).sum()
    };
    let text_encoders: Vec<Component> = model
        .components()
        .into_iter()
        .filter(|c| c.is_text_encoder())
        .collect();
    ModelInfo {
        dir: model.dir().to_path_buf(),
        name: folder_name(model.dir()),
        family,
        native_size_px: model.native_size_px(),
        size_multiple_px: 8,
        defaults: DEFAULTS,
        wants_its_defaults: false,
        capabilities: Capabilities {
            txt2img: !inpainting_model,
            img2img: !inpainting_model,
            inpaint: true,
            inpainting_model,
            edit_references: 0,
            controlnet: false,
            lora: false,
        },
        negative_prompt: true,
        sampler_choice: true,
        own_sampler: "",
        guidance: GuidanceKind::ClassifierFree,
        footprint,
        weights: PartWeights {
            text: weights_of(&text_encoders),
            denoiser: weights_of(&[Component::Unet]),
            vae: weights_of(&[Component::Vae]),
        },
    }
}

impl LoadedModel for Loaded<SdModel> {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn denoiser(&self) -> Component {
        Component::Unet
    }

    fn check_inputs(&self, request: &GenerateRequest) -> Result<(u32, u32), RequestError> {
        sd::check_inputs(&self.model, request)
    }

    fn encode(
        &self,
        request: &GenerateRequest,
        plan: &Plan,
        timings: &mut StageTimings,
    ) -> Result<EncodedPrompt, PipelineError> {
        sd::encode(&self.model, request, plan, timings).map(EncodedPrompt::new)
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
        let prompt = prompt.get::<sd::EncodedPrompt>()?;
        sd::denoise(&self.model, request, plan, prompt, noise, observer, timings)
    }

    fn decode(
        &self,
        request: &GenerateRequest,
        denoised: Denoised,
    ) -> Result<Generated, PipelineError> {
        sd::decode(&self.model, request, denoised)
    }

    fn preview(&self, latents: &Tensor) -> candle_core::Result<RgbImage> {
        match self.model.family {
            Variant::StableDiffusion => latent_preview(latents, &SD_PREVIEW),
            Variant::StableDiffusionXl => latent_preview(latents, &SDXL_PREVIEW),
        }
    }

    fn set_vae_tiling(&mut self, tiling: VaeTiling) {
        self.model.set_vae_tiling(tiling);
    }

    fn time_denoiser_forward(
        &mut self,
        _request: &GenerateRequest,
        size_px: u32,
        runs: usize,
    ) -> Result<Vec<f64>, PipelineError> {
        let device = self.model.device().clone();
        self.model.load(Component::Unet)?;
        let unet = self
            .model
            .unet()
            .ok_or(PipelineError::NotLoaded(Component::Unet))?;
        let side = (size_px / 8) as usize;
        let shape = &self.model.unet_shape;
        let latents = Tensor::randn(0f32, 1.0, (2, shape.in_channels, side, side), &device)?;
        let text = Tensor::randn(0f32, 1.0, (2, 77, shape.cross_attention_dim()), &device)?;
        let text_time = match shape.text_time {
            Some(text_time) => Some(TextTimeConditioning {
                pooled_text: Tensor::randn(
                    0f32,
                    1.0,
                    (2, text_time.input_dim - 6 * text_time.time_embed_dim),
                    &device,
                )?,
                time_ids: Tensor::ones((2, 6), DType::F32, &device)?,
            }),
            None => None,
        };
        time_forwards(runs, || {
            unet.forward(&latents, 999.0, &text, text_time.as_ref())
        })
    }
}
