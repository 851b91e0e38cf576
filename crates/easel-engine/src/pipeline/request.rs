//! What a generation asks for, and the checks made before any work.

use std::path::PathBuf;

use image::{GrayImage, RgbImage};

use crate::schedulers::SamplerKind;

/// Pixels per latent for every Stable Diffusion VAE.
pub const LATENT_SCALE_PX: u32 = 8;
/// Smallest side Easel generates, in pixels.
pub const MIN_SIDE_PX: u32 = 64;
/// Largest side Easel generates, in pixels.
pub const MAX_SIDE_PX: u32 = 4096;

/// The image an img2img or inpaint run starts from.
#[derive(Debug, Clone)]
pub struct SourceImage {
    /// The init image (resized to the output size when they differ).
    pub image: RgbImage,
    /// How much of the schedule to run, 0..=1: 1 ignores the image's content entirely.
    pub strength: f64,
    /// Where to repaint (white) and keep (black); `None` is img2img.
    pub mask: Option<GrayImage>,
    /// Blur of the mask's edge in pixels (A1111's "mask blur"), applied by the pipeline so
    /// the repainted region blends into the kept pixels; 0 keeps the mask as painted.
    pub feather_px: u32,
}

/// An image in a request, with what it is for.
#[derive(Debug, Clone)]
pub enum Reference {
    /// The image img2img and inpainting start from, with its strength and mask (at most one
    /// per request).
    Init(SourceImage),
    /// An image an edit model keeps from or brings in ("the cat from the first image"), in
    /// the order the prompt refers to them.
    Edit {
        /// The pixels.
        image: RgbImage,
        /// Its file name, or "pasted", for the result's parameters.
        name: String,
    },
    /// The control image of a ControlNet (edges, depth, pose).
    Control {
        /// The pixels.
        image: RgbImage,
        /// The ControlNet's folder.
        controlnet: PathBuf,
        /// How strongly it steers, 0 to 2 (diffusers' `controlnet_conditioning_scale`).
        scale: f64,
    },
}

/// A change applied to a model's weights for one request (the cache keeps a model loaded with
/// one set of adapters apart from the same model with another).
#[derive(Debug, Clone, PartialEq)]
pub enum Adapter {
    /// A LoRA file (kohya/A1111 or PEFT) and its multiplier.
    Lora {
        /// The `.safetensors` file.
        file: PathBuf,
        /// The multiplier (A1111's `<lora:name:0.8>`).
        scale: f64,
    },
}

/// Where an inpaint is painted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InpaintArea {
    /// The masked area when the image is larger than the model's native size, else whole.
    #[default]
    Auto,
    /// A box around the mask, cut out and painted at the model's native pixel count.
    Masked,
    /// The whole image at the output size.
    Whole,
}

impl InpaintArea {
    /// Whether an inpaint of `size_px` on a model of `native_px` paints the masked area.
    pub fn paints_masked_area(self, size_px: (u32, u32), native_px: (u32, u32)) -> bool {
        match self {
            InpaintArea::Whole => false,
            InpaintArea::Masked => true,
            InpaintArea::Auto => {
                u64::from(size_px.0) * u64::from(size_px.1)
                    > u64::from(native_px.0) * u64::from(native_px.1)
            }
        }
    }

    /// `auto`, `masked` or `whole`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(InpaintArea::Auto),
            "masked" => Ok(InpaintArea::Masked),
            "whole" => Ok(InpaintArea::Whole),
            other => Err(format!(
                "{other:?}: the inpaint area is auto, masked or whole"
            )),
        }
    }
}

/// How an inpaint is painted and put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InpaintOptions {
    /// Where the model paints.
    pub area: InpaintArea,
    /// Context around the mask's box in the masked area, in output pixels.
    pub mask_padding_px: u32,
    /// Match the repaint's colours to the band around the mask (see `colour_match`).
    pub match_colours: bool,
}

/// The masked area's default context, in pixels (A1111's default).
pub const DEFAULT_MASK_PADDING_PX: u32 = 32;

impl Default for InpaintOptions {
    fn default() -> Self {
        Self {
            area: InpaintArea::Auto,
            mask_padding_px: DEFAULT_MASK_PADDING_PX,
            match_colours: true,
        }
    }
}

/// Which of the three modes a request is, derived from what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the prompt alone.
    TextToImage,
    /// From an init image.
    ImageToImage,
    /// Repaint the masked part of an init image.
    Inpaint,
}

impl Mode {
    /// A short name for logs and the window.
    pub fn name(self) -> &'static str {
        match self {
            Mode::TextToImage => "txt2img",
            Mode::ImageToImage => "img2img",
            Mode::Inpaint => "inpaint",
        }
    }
}

/// Everything a generation needs. Sizes of `None` take the init image's size, else the
/// model's native size.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The diffusers model folder.
    pub model: PathBuf,
    /// What to draw.
    pub prompt: String,
    /// What to steer away from; `None` differs from `Some("")` for SDXL (zero embeddings).
    pub negative_prompt: Option<String>,
    /// The sampler.
    pub sampler: SamplerKind,
    /// Inference steps of the full schedule (img2img runs `strength` of them).
    pub steps: usize,
    /// Classifier-free guidance scale; 1 or less disables guidance.
    pub guidance: f64,
    /// Seed of the noise generator.
    pub seed: u64,
    /// Output width in pixels.
    pub width: Option<u32>,
    /// Output height in pixels.
    pub height: Option<u32>,
    /// The images the request uses: at most one init image (img2img, inpaint), edit
    /// references, control images.
    pub references: Vec<Reference>,
    /// LoRA files and their scales, applied to the model for this request.
    pub adapters: Vec<Adapter>,
    /// Inpainting: put the unmasked original pixels back after decoding (through the mask,
    /// feathered as painted). Off only to compare the raw decode.
    pub paste_back: bool,
    /// Inpainting: the area painted, and colour matching.
    pub inpaint: InpaintOptions,
    /// FLUX: T5 tokens the prompt is padded to; `None` takes the model's (256 schnell, 512
    /// dev). Stable Diffusion ignores it.
    pub max_sequence_length: Option<usize>,
}

impl GenerateRequest {
    /// A txt2img request with Easel's defaults.
    pub fn new(model: impl Into<PathBuf>, prompt: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            prompt: prompt.into(),
            negative_prompt: None,
            sampler: SamplerKind::Euler,
            steps: 20,
            guidance: 7.5,
            seed: 0,
            width: None,
            height: None,
            references: Vec::new(),
            adapters: Vec::new(),
            paste_back: true,
            inpaint: InpaintOptions::default(),
            max_sequence_length: None,
        }
    }

    /// The init image, if the request has one.
    pub fn init(&self) -> Option<&SourceImage> {
        self.references.iter().find_map(|r| match r {
            Reference::Init(source) => Some(source),
            _ => None,
        })
    }

    /// The init image, to change (the warm-up's shortened copy).
    pub fn init_mut(&mut self) -> Option<&mut SourceImage> {
        self.references.iter_mut().find_map(|r| match r {
            Reference::Init(source) => Some(source),
            _ => None,
        })
    }

    /// The edit references, in order.
    pub fn edit_references(&self) -> impl Iterator<Item = (&RgbImage, &str)> {
        self.references.iter().filter_map(|r| match r {
            Reference::Edit { image, name } => Some((image, name.as_str())),
            _ => None,
        })
    }

    /// A request with `init` as its init image (replacing any other).
    pub fn with_init(mut self, init: SourceImage) -> Self {
        self.references.retain(|r| !matches!(r, Reference::Init(_)));
        self.references.insert(0, Reference::Init(init));
        self
    }

    /// The mode this request runs in.
    pub fn mode(&self) -> Mode {
        match self.init() {
            None => Mode::TextToImage,
            Some(SourceImage { mask: None, .. }) => Mode::ImageToImage,
            Some(SourceImage { mask: Some(_), .. }) => Mode::Inpaint,
        }
    }

    /// The checks that need no model: run when the request arrives.
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.prompt.trim().is_empty() {
            return Err(RequestError::EmptyPrompt);
        }
        if self.steps == 0 || self.steps > 1000 {
            return Err(RequestError::Steps(self.steps));
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 || self.guidance > 100.0 {
            return Err(RequestError::Guidance(self.guidance));
        }
        for (side, value) in [("width", self.width), ("height", self.height)] {
            if let Some(px) = value {
                check_side(side, px)?;
            }
        }
        let inits = self
            .references
            .iter()
            .filter(|r| matches!(r, Reference::Init(_)))
            .count();
        if inits > 1 {
            return Err(RequestError::ModelCannot(format!(
                "{inits} init images: a request starts from one"
            )));
        }
        for reference in &self.references {
            let image = match reference {
                Reference::Init(source) => &source.image,
                Reference::Edit { image, .. } | Reference::Control { image, .. } => image,
            };
            if image.width() == 0 || image.height() == 0 {
                return Err(RequestError::EmptyImage);
            }
        }
        for adapter in &self.adapters {
            let Adapter::Lora { file, scale } = adapter;
            if !scale.is_finite() || scale.abs() > 10.0 {
                return Err(RequestError::ModelCannot(format!(
                    "LoRA scale {scale} for {} is not possible: use -10 to 10 (usually 0.5 to 1)",
                    file.display()
                )));
            }
        }
        if let Some(source) = self.init() {
            if !(0.0..=1.0).contains(&source.strength) {
                return Err(RequestError::Strength(source.strength));
            }
            if source.image.width() == 0 || source.image.height() == 0 {
                return Err(RequestError::EmptyImage);
            }
            if let Some(mask) = &source.mask {
                if mask.dimensions() != source.image.dimensions() {
                    return Err(RequestError::MaskSize {
                        mask: mask.dimensions(),
                        image: source.image.dimensions(),
                    });
                }
            }
            let steps_run = self.steps - crate::schedulers::start_step(self.steps, source.strength);
            if steps_run == 0 {
                return Err(RequestError::NoStepsAtStrength {
                    strength: source.strength,
                    steps: self.steps,
                });
            }
        }
        Ok(())
    }

    /// The output size: as asked, else the init image's (rounded down to a multiple of 8),
    /// else `native`.
    pub fn resolved_size(&self, native: (u32, u32)) -> Result<(u32, u32), RequestError> {
        self.resolved_size_multiple_of(native, LATENT_SCALE_PX)
    }

    /// `resolved_size` for a model whose sides must be multiples of `multiple` pixels (FLUX:
    /// 16); an init image's size is rounded down to one.
    pub fn resolved_size_multiple_of(
        &self,
        native: (u32, u32),
        multiple: u32,
    ) -> Result<(u32, u32), RequestError> {
        let from_source = self.init().map(|s| {
            let round = |px: u32| (px / multiple) * multiple;
            (round(s.image.width()), round(s.image.height()))
        });
        let (default_w, default_h) = from_source.unwrap_or(native);
        let size = (
            self.width.unwrap_or(default_w),
            self.height.unwrap_or(default_h),
        );
        check_side("width", size.0)?;
        check_side("height", size.1)?;
        for (side, px) in [("width", size.0), ("height", size.1)] {
            if !px.is_multiple_of(multiple) {
                return Err(RequestError::SizeNotMultiple { side, px, multiple });
            }
        }
        Ok(size)
    }
}

fn check_side(side: &'static str, px: u32) -> Result<(), RequestError> {
    if !px.is_multiple_of(LATENT_SCALE_PX) {
        return Err(RequestError::SizeNotMultiple {
            side,
            px,
            multiple: LATENT_SCALE_PX,
        });
    }
    if !(MIN_SIDE_PX..=MAX_SIDE_PX).contains(&px) {
        return Err(RequestError::SizeOutOfRange { side, px });
    }
    Ok(())
}

/// A request that can't run, found before any work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// The prompt is empty or blank.
    #[error("the prompt is empty: describe what to draw")]
    EmptyPrompt,
    /// Steps outside 1..=1000.
    #[error("{0} steps is not possible: use 1 to 1000")]
    Steps(usize),
    /// Guidance negative, too large or not a number.
    #[error(
        "guidance {0} is not possible: use 0 to 100 (about 7 for SD, 0 to 1 for turbo models)"
    )]
    Guidance(f64),
    /// Strength outside 0..=1.
    #[error("strength {0} is not possible: use 0 to 1")]
    Strength(f64),
    /// A strength so low that no step would run.
    #[error("strength {strength} with {steps} steps runs no step at all: raise the strength or the steps")]
    NoStepsAtStrength {
        /// The strength asked for.
        strength: f64,
        /// The steps asked for.
        steps: usize,
    },
    /// A side that is not a multiple of what the model needs (8; FLUX 16).
    #[error("{side} {px} px is not a multiple of {multiple}: use {} or {}", px / multiple * multiple, (px / multiple + 1) * multiple)]
    SizeNotMultiple {
        /// `width` or `height`.
        side: &'static str,
        /// The value asked for.
        px: u32,
        /// What the sides must be multiples of.
        multiple: u32,
    },
    /// A side outside what Easel generates.
    #[error("{side} {px} px is outside {MIN_SIDE_PX} to {MAX_SIDE_PX} px")]
    SizeOutOfRange {
        /// `width` or `height`.
        side: &'static str,
        /// The value asked for.
        px: u32,
    },
    /// An image of the request has no pixels.
    #[error("an image of the request (init image or reference) is empty")]
    EmptyImage,
    /// Mask and init image differ in size.
    #[error("the mask is {}x{} but the init image is {}x{}: paint or load a mask of the image's size", mask.0, mask.1, image.0, image.1)]
    MaskSize {
        /// Mask width and height.
        mask: (u32, u32),
        /// Image width and height.
        image: (u32, u32),
    },
    /// The model can't do what the request asks.
    #[error("{0}")]
    ModelCannot(String),
}
