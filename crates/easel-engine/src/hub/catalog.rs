//! The models Easel offers by name: where each lives on the hub, the files it needs, what it
//! can do, how it likes to be run, and how big it is.
//!
//! Sizes are parameter counts times the bytes of each file's stored precision, so the
//! download size and the memory estimate (`fit`) come from one number; the hub's own sizes
//! replace them once a download has listed the repository.

use crate::schedulers::SamplerKind;

/// A model in the catalog.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CatalogEntry {
    /// Short name for the command line (`easel download sd15`).
    pub id: &'static str,
    /// What the window shows.
    pub name: &'static str,
    /// The hub repository (`org/name`) holding the model.
    pub repo: &'static str,
    /// The branch or commit fetched.
    pub revision: &'static str,
    /// How its denoiser's activations grow, for the memory estimate.
    pub footprint: DenoiserFootprint,
    /// What it can do.
    pub capabilities: Capabilities,
    /// How it is run when the user has not said.
    pub defaults: Defaults,
    /// The licence, in a line, and where to read it.
    pub licence: &'static str,
    /// Whether the hub asks for an accepted licence and a token before serving the files.
    pub gated: bool,
    /// The files taken from `repo`.
    pub files: &'static [FileSpec],
    /// Files the repository lacks, taken from the repositories candle's examples use.
    pub borrowed: &'static [BorrowedFile],
}

/// How a denoiser's largest activations grow with the image: the attention scores at the
/// level with the most tokens, and the feature maps it keeps (a UNet's skips, a
/// transformer's MLP). Each family says its own from its config; the catalog names those of
/// the checkpoints it offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenoiserFootprint {
    /// Attention heads at that level.
    pub heads: u64,
    /// Latent pixels per token there (1 at full latent resolution; 4 for 2x2 patches or one
    /// level down).
    pub latent_px_per_token: u64,
    /// Text tokens that join the image tokens in every attention (joint attention).
    pub joint_text_tokens: u64,
    /// Samples per step: 2 with classifier-free guidance, 1 for guidance-distilled models.
    pub batch: u64,
    /// Channels of the kept feature maps.
    pub feature_channels: u64,
    /// How many such maps are alive at once.
    pub feature_maps: u64,
    /// Whether the feature maps have one entry per token (a transformer) rather than per
    /// latent pixel (a UNet).
    pub features_per_token: bool,
}

impl DenoiserFootprint {
    /// SD 1.x: 8 heads over every latent pixel, 320-channel skips.
    pub const SD15: Self = Self::unet(8, 1);
    /// SD 2.x: 5 heads of 64 at the first level.
    pub const SD21: Self = Self::unet(5, 1);
    /// SDXL: no attention at the first level; 10 heads at the second.
    pub const SDXL: Self = Self::unet(10, 4);
    /// FLUX.1: 24 heads over 2x2 patches and up to 512 T5 tokens, 3072 wide, no CFG batch.
    pub const FLUX1: Self = Self::joint_transformer(24, 512, 3072);
    /// FLUX.2 [klein] 4B: 24 heads over 2x2 patches, 512 prompt tokens, 3072 wide.
    pub const FLUX2_KLEIN_4B: Self = Self::joint_transformer(24, 512, 3072);
    /// FLUX.2 [klein] 9B: 32 heads, 4096 wide.
    pub const FLUX2_KLEIN_9B: Self = Self::joint_transformer(32, 512, 4096);

    /// A UNet with `heads` at its first attention level, `latent_px_per_token` there.
    pub const fn unet(heads: u64, latent_px_per_token: u64) -> Self {
        Self {
            heads,
            latent_px_per_token,
            joint_text_tokens: 0,
            batch: 2,
            feature_channels: 320,
            // Measured: SD 1.5's forward on the CPU holds about 22 maps of its first level
            // beyond its weights (skips, the up path's concatenations, the transformer's
            // norms and projections, the feed-forward's chunk).
            feature_maps: 22,
            features_per_token: false,
        }
    }

    /// A joint-attention transformer over 2x2 patches and `text_tokens`, `width` wide.
    pub const fn joint_transformer(heads: u64, text_tokens: u64, width: u64) -> Self {
        Self {
            heads,
            latent_px_per_token: 4,
            joint_text_tokens: text_tokens,
            batch: 1,
            feature_channels: width,
            feature_maps: 8,
            features_per_token: true,
        }
    }
}

/// What a model can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Text to image.
    pub txt2img: bool,
    /// Image to image.
    pub img2img: bool,
    /// Repainting a masked region.
    pub inpaint: bool,
    /// Conditioning on reference images (IP-Adapter, Redux); none of today's entries.
    pub references: bool,
}

impl Capabilities {
    /// The capabilities as words, for lists.
    pub fn describe(&self) -> String {
        let names = [
            (self.txt2img, "txt2img"),
            (self.img2img, "img2img"),
            (self.inpaint, "inpaint"),
            (self.references, "references"),
        ];
        let kept: Vec<&str> = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        kept.join(", ")
    }
}

/// The settings a model is meant to run with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    /// Output width in pixels.
    pub width_px: u32,
    /// Output height in pixels.
    pub height_px: u32,
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale (0 for distilled models that run without classifier-free guidance).
    pub guidance: f64,
    /// The sampler (FLUX always runs flow-match Euler).
    pub sampler: SamplerKind,
}

/// One file of a repository.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FileSpec {
    /// Path in the repository.
    pub path: &'static str,
    /// The half-precision variant's path, preferred when the model runs in 16 bits.
    pub fp16_path: Option<&'static str>,
    /// What the weights in it are, or `None` for configs and tokenizers.
    pub weights: Option<Weights>,
}

/// The weights a file holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// Which stage of the pipeline uses them.
    pub part: Part,
    /// Parameter count.
    pub params: u64,
    /// Precision as stored in `FileSpec::path`.
    pub stored: Stored,
}

/// The stages that run apart in low-memory mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Text encoders.
    TextEncoder,
    /// UNet or transformer.
    Denoiser,
    /// VAE or autoencoder.
    Vae,
}

/// A stored precision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stored {
    /// 32-bit float (its `fp16_path`, if any, is 16-bit).
    F32,
    /// 16-bit float or bfloat16.
    Half,
    /// GGUF blocks of this many bits per weight; loaded as they are.
    Quantized(f32),
}

impl Stored {
    /// Bytes per parameter on disk.
    pub fn bytes_per_param(self) -> f64 {
        match self {
            Stored::F32 => 4.0,
            Stored::Half => 2.0,
            Stored::Quantized(bits) => f64::from(bits) / 8.0,
        }
    }
}

/// A file taken from another repository and placed in the model's folder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BorrowedFile {
    /// The repository it comes from.
    pub repo: &'static str,
    /// The branch or commit fetched.
    pub revision: &'static str,
    /// Its path there.
    pub path: &'static str,
    /// Where the model folder needs it.
    pub place_at: &'static str,
    /// Roughly how big it is.
    pub approx_bytes: u64,
    /// The weights it holds, if it is a weight file.
    pub weights: Option<Weights>,
}

impl FileSpec {
    /// The path to fetch: the fp16 variant when `prefer_fp16` and there is one.
    pub fn path_for(&self, prefer_fp16: bool) -> &'static str {
        match (prefer_fp16, self.fp16_path) {
            (true, Some(fp16)) => fp16,
            _ => self.path,
        }
    }

    /// Bytes of the file fetched for `prefer_fp16` (0 for configs).
    pub fn approx_bytes(&self, prefer_fp16: bool) -> u64 {
        let Some(weights) = self.weights else {
            return 0;
        };
        let per_param = if prefer_fp16 && self.fp16_path.is_some() {
            2.0
        } else {
            weights.stored.bytes_per_param()
        };
        (weights.params as f64 * per_param) as u64
    }
}

impl FileSpec {
    /// Whether it stands for every weight file of a folder (`path` ends in `/`): the
    /// repository's own shard names are taken from its listing, never guessed.
    pub fn is_folder(&self) -> bool {
        self.path.ends_with('/')
    }
}

impl CatalogEntry {
    /// The files to fetch from `repo`, with fp16 variants when `prefer_fp16`.
    pub fn repo_paths(&self, prefer_fp16: bool) -> Vec<&'static str> {
        self.files.iter().map(|f| f.path_for(prefer_fp16)).collect()
    }

    /// Approximate download size, borrowed files included.
    pub fn approx_download_bytes(&self, prefer_fp16: bool) -> u64 {
        let own: u64 = self.files.iter().map(|f| f.approx_bytes(prefer_fp16)).sum();
        own + self.borrowed.iter().map(|b| b.approx_bytes).sum::<u64>()
    }

    /// The weights of every file, borrowed ones included.
    pub fn weights(&self) -> impl Iterator<Item = &Weights> {
        let own = self.files.iter().filter_map(|f| f.weights.as_ref());
        own.chain(self.borrowed.iter().filter_map(|b| b.weights.as_ref()))
    }
}

/// Every model Easel offers.
pub fn entries() -> &'static [CatalogEntry] {
    &CATALOG
}

/// The entry named by `id`, or the first whose repository is `name` (case-insensitive).
pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    let wanted = name.trim();
    CATALOG
        .iter()
        .find(|e| e.id.eq_ignore_ascii_case(wanted))
        .or_else(|| CATALOG.iter().find(|e| e.repo.eq_ignore_ascii_case(wanted)))
}

// Parameter counts of the published networks.
const CLIP_L_PARAMS: u64 = 123_060_480;
const OPENCLIP_H_PARAMS: u64 = 340_387_840;
const OPENCLIP_BIG_G_PARAMS: u64 = 694_659_840;
const SD15_UNET_PARAMS: u64 = 859_520_964;
const SD21_UNET_PARAMS: u64 = 865_910_724;
const SDXL_UNET_PARAMS: u64 = 2_567_463_684;
const SD_VAE_PARAMS: u64 = 83_653_863;
const FLUX_TRANSFORMER_PARAMS: u64 = 11_901_408_320;
const FLUX_AE_PARAMS: u64 = 83_819_683;
const T5_XXL_SHARD_1_PARAMS: u64 = 2_494_550_016;
const T5_XXL_SHARD_2_PARAMS: u64 = 2_267_760_640;
/// Bits per weight of the GGUF FLUX transformers candle's example uses (4-bit k-quants).
const FLUX_GGUF_BITS: f32 = 4.5;

const fn config(path: &'static str) -> FileSpec {
    FileSpec {
        path,
        fp16_path: None,
        weights: None,
    }
}

const fn weights(
    path: &'static str,
    fp16_path: Option<&'static str>,
    part: Part,
    params: u64,
    stored: Stored,
) -> FileSpec {
    FileSpec {
        path,
        fp16_path,
        weights: Some(Weights {
            part,
            params,
            stored,
        }),
    }
}

const fn borrowed(repo: &'static str, path: &'static str, place_at: &'static str) -> BorrowedFile {
    BorrowedFile {
        repo,
        revision: "main",
        path,
        place_at,
        approx_bytes: 2_300_000,
        weights: None,
    }
}

/// candle's examples tokenize SD 1.x and 2.x prompts with this tokenizer.json.
const CLIP_B32_TOKENIZER: BorrowedFile = borrowed(
    "openai/clip-vit-base-patch32",
    "tokenizer.json",
    "tokenizer/tokenizer.json",
);
/// candle's SDXL and FLUX examples use this one for the CLIP-L prompt.
const CLIP_L14_TOKENIZER: BorrowedFile = borrowed(
    "openai/clip-vit-large-patch14",
    "tokenizer.json",
    "tokenizer/tokenizer.json",
);
/// candle's SDXL example uses this one for the second (bigG) prompt.
const CLIP_BIG_G_TOKENIZER: BorrowedFile = borrowed(
    "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
    "tokenizer.json",
    "tokenizer_2/tokenizer.json",
);
/// candle's FLUX example uses this T5 tokenizer.
const T5_XXL_TOKENIZER: BorrowedFile = borrowed(
    "lmz/mt5-tokenizers",
    "t5-v1_1-xxl.tokenizer.json",
    "tokenizer_2/tokenizer.json",
);

const fn sd_unet(params: u64) -> FileSpec {
    weights(
        "unet/diffusion_pytorch_model.safetensors",
        Some("unet/diffusion_pytorch_model.fp16.safetensors"),
        Part::Denoiser,
        params,
        Stored::F32,
    )
}

const SD_VAE: FileSpec = weights(
    "vae/diffusion_pytorch_model.safetensors",
    Some("vae/diffusion_pytorch_model.fp16.safetensors"),
    Part::Vae,
    SD_VAE_PARAMS,
    Stored::F32,
);

const fn text_encoder(params: u64) -> FileSpec {
    weights(
        "text_encoder/model.safetensors",
        Some("text_encoder/model.fp16.safetensors"),
        Part::TextEncoder,
        params,
        Stored::F32,
    )
}

/// The files of an SD 1.x or 2.x diffusers repository with this UNet and text encoder.
const fn sd_files(unet_params: u64, text_params: u64) -> [FileSpec; 9] {
    [
        config("model_index.json"),
        config("scheduler/scheduler_config.json"),
        config("text_encoder/config.json"),
        text_encoder(text_params),
        config("tokenizer/tokenizer_config.json"),
        config("unet/config.json"),
        sd_unet(unet_params),
        config("vae/config.json"),
        SD_VAE,
    ]
}

const SD15_FILES: [FileSpec; 9] = sd_files(SD15_UNET_PARAMS, CLIP_L_PARAMS);
const SD21_FILES: [FileSpec; 9] = sd_files(SD21_UNET_PARAMS, OPENCLIP_H_PARAMS);

const SDXL_FILES: [FileSpec; 12] = [
    config("model_index.json"),
    config("scheduler/scheduler_config.json"),
    config("text_encoder/config.json"),
    text_encoder(CLIP_L_PARAMS),
    config("text_encoder_2/config.json"),
    weights(
        "text_encoder_2/model.safetensors",
        Some("text_encoder_2/model.fp16.safetensors"),
        Part::TextEncoder,
        OPENCLIP_BIG_G_PARAMS,
        Stored::F32,
    ),
    config("tokenizer/tokenizer_config.json"),
    config("tokenizer_2/tokenizer_config.json"),
    config("unet/config.json"),
    sd_unet(SDXL_UNET_PARAMS),
    config("vae/config.json"),
    SD_VAE,
];

/// The files of a FLUX.1 repository besides its transformer.
const fn flux_files(transformer: FileSpec) -> [FileSpec; 14] {
    [
        config("model_index.json"),
        config("scheduler/scheduler_config.json"),
        config("transformer/config.json"),
        transformer,
        config("vae/config.json"),
        weights(
            "ae.safetensors",
            None,
            Part::Vae,
            FLUX_AE_PARAMS,
            Stored::F32,
        ),
        config("text_encoder/config.json"),
        weights(
            "text_encoder/model.safetensors",
            None,
            Part::TextEncoder,
            CLIP_L_PARAMS,
            Stored::Half,
        ),
        config("tokenizer/tokenizer_config.json"),
        config("text_encoder_2/config.json"),
        config("text_encoder_2/model.safetensors.index.json"),
        weights(
            "text_encoder_2/model-00001-of-00002.safetensors",
            None,
            Part::TextEncoder,
            T5_XXL_SHARD_1_PARAMS,
            Stored::Half,
        ),
        weights(
            "text_encoder_2/model-00002-of-00002.safetensors",
            None,
            Part::TextEncoder,
            T5_XXL_SHARD_2_PARAMS,
            Stored::Half,
        ),
        config("tokenizer_2/tokenizer_config.json"),
    ]
}

const fn flux_transformer(path: &'static str) -> FileSpec {
    weights(
        path,
        None,
        Part::Denoiser,
        FLUX_TRANSFORMER_PARAMS,
        Stored::Half,
    )
}

const FLUX_SCHNELL_FILES: [FileSpec; 14] =
    flux_files(flux_transformer("flux1-schnell.safetensors"));
const FLUX_DEV_FILES: [FileSpec; 14] = flux_files(flux_transformer("flux1-dev.safetensors"));
/// The GGUF entries take everything but the transformer from the BFL repository; the
/// transformer's config still describes the network, so it stays.
const FLUX_GGUF_FILES: [FileSpec; 13] = {
    let all = flux_files(config("transformer/config.json"));
    [
        all[0], all[1], all[2], all[4], all[5], all[6], all[7], all[8], all[9], all[10], all[11],
        all[12], all[13],
    ]
};

const fn gguf_transformer(path: &'static str) -> BorrowedFile {
    BorrowedFile {
        repo: "lmz/candle-flux",
        revision: "main",
        path,
        place_at: path,
        approx_bytes: (FLUX_TRANSFORMER_PARAMS as f64 * FLUX_GGUF_BITS as f64 / 8.0) as u64,
        weights: Some(Weights {
            part: Part::Denoiser,
            params: FLUX_TRANSFORMER_PARAMS,
            stored: Stored::Quantized(FLUX_GGUF_BITS),
        }),
    }
}

const ALL_MODES: Capabilities = Capabilities {
    txt2img: true,
    img2img: true,
    inpaint: true,
    references: false,
};

const EDIT_MODES: Capabilities = Capabilities {
    txt2img: true,
    img2img: true,
    inpaint: true,
    references: true,
};

const INPAINT_ONLY: Capabilities = Capabilities {
    txt2img: false,
    img2img: false,
    inpaint: true,
    references: false,
};

/// Every weight file of `folder` (ending in `/`), whatever the repository names its shards.
const fn weights_folder(folder: &'static str, part: Part, params: u64, stored: Stored) -> FileSpec {
    weights(folder, None, part, params, stored)
}

/// A FLUX.2 [klein] repository in the diffusers layout with a Qwen3 text encoder of
/// `text_params` and a transformer of `transformer_params` (bf16); the Black Forest Labs single
/// file beside them is not fetched.
const fn flux2_klein_files(text_params: u64, transformer_params: u64) -> [FileSpec; 10] {
    [
        config("model_index.json"),
        config("scheduler/scheduler_config.json"),
        config("text_encoder/config.json"),
        weights_folder(
            "text_encoder/",
            Part::TextEncoder,
            text_params,
            Stored::Half,
        ),
        config("tokenizer/tokenizer.json"),
        config("tokenizer/tokenizer_config.json"),
        config("transformer/config.json"),
        weights_folder(
            "transformer/",
            Part::Denoiser,
            transformer_params,
            Stored::Half,
        ),
        config("vae/config.json"),
        weights_folder("vae/", Part::Vae, FLUX2_VAE_PARAMS, Stored::Half),
    ]
}

/// Approximate parameter counts of the FLUX.2 parts (Qwen3-4B and -8B as published; the
/// transformers by their names; the autoencoder as FLUX.1's).
const QWEN3_4B_PARAMS: u64 = 4_022_000_000;
const QWEN3_8B_PARAMS: u64 = 8_191_000_000;
const KLEIN_4B_PARAMS: u64 = 3_900_000_000;
const KLEIN_9B_PARAMS: u64 = 9_000_000_000;
const FLUX2_VAE_PARAMS: u64 = 84_000_000;
const FLUX2_KLEIN_4B_FILES: [FileSpec; 10] = flux2_klein_files(QWEN3_4B_PARAMS, KLEIN_4B_PARAMS);
const FLUX2_KLEIN_9B_FILES: [FileSpec; 10] = flux2_klein_files(QWEN3_8B_PARAMS, KLEIN_9B_PARAMS);
/// klein 4B without its transformer's weights (its config stays: it describes the network):
/// the GGUF entries borrow the transformer.
const FLUX2_KLEIN_4B_GGUF_FILES: [FileSpec; 9] = {
    let all = FLUX2_KLEIN_4B_FILES;
    [
        all[0], all[1], all[2], all[3], all[4], all[5], all[6], all[8], all[9],
    ]
};

/// A GGUF quantization of klein 4B's transformer from stable-diffusion.cpp's repository, of
/// `bits` per weight on average (its published sizes: Q4_0 2.5 GB, Q8_0 4.3 GB).
const fn klein_4b_gguf(path: &'static str, bits: f32) -> BorrowedFile {
    BorrowedFile {
        repo: "leejet/FLUX.2-klein-4B-GGUF",
        revision: "main",
        path,
        place_at: path,
        approx_bytes: (KLEIN_4B_PARAMS as f64 * bits as f64 / 8.0) as u64,
        weights: Some(Weights {
            part: Part::Denoiser,
            params: KLEIN_4B_PARAMS,
            stored: Stored::Quantized(bits),
        }),
    }
}

const fn defaults(side_px: u32, steps: usize, guidance: f64, sampler: SamplerKind) -> Defaults {
    Defaults {
        width_px: side_px,
        height_px: side_px,
        steps,
        guidance,
        sampler,
    }
}

const OPENRAIL_M: &str =
    "CreativeML OpenRAIL-M: use restrictions apply (see the model card on the hub)";
const OPENRAIL_PP: &str =
    "CreativeML OpenRAIL++-M: use restrictions apply (see the model card on the hub)";
const STABILITY_COMMUNITY: &str =
    "Stability AI Community License: free below $1M yearly revenue, else an enterprise licence";

static CATALOG: [CatalogEntry; 15] = [
    CatalogEntry {
        id: "sd15",
        name: "Stable Diffusion 1.5",
        repo: "stable-diffusion-v1-5/stable-diffusion-v1-5",
        revision: "main",
        footprint: DenoiserFootprint::SD15,
        capabilities: ALL_MODES,
        defaults: defaults(512, 25, 7.5, SamplerKind::Dpmpp2mKarras),
        licence: OPENRAIL_M,
        gated: false,
        files: &SD15_FILES,
        borrowed: &[CLIP_B32_TOKENIZER],
    },
    CatalogEntry {
        id: "sd15-inpaint",
        name: "Stable Diffusion 1.5 Inpainting",
        repo: "stable-diffusion-v1-5/stable-diffusion-inpainting",
        revision: "main",
        footprint: DenoiserFootprint::SD15,
        capabilities: INPAINT_ONLY,
        defaults: defaults(512, 25, 7.5, SamplerKind::Dpmpp2mKarras),
        licence: OPENRAIL_M,
        gated: false,
        files: &SD15_FILES,
        borrowed: &[CLIP_B32_TOKENIZER],
    },
    CatalogEntry {
        id: "sd21",
        name: "Stable Diffusion 2.1 (768, v-prediction)",
        repo: "stabilityai/stable-diffusion-2-1",
        revision: "main",
        footprint: DenoiserFootprint::SD21,
        capabilities: ALL_MODES,
        defaults: defaults(768, 25, 7.5, SamplerKind::Dpmpp2mKarras),
        licence: OPENRAIL_PP,
        gated: false,
        files: &SD21_FILES,
        borrowed: &[CLIP_B32_TOKENIZER],
    },
    CatalogEntry {
        id: "sd-turbo",
        name: "SD-Turbo (1 step)",
        repo: "stabilityai/sd-turbo",
        revision: "main",
        footprint: DenoiserFootprint::SD21,
        capabilities: ALL_MODES,
        defaults: defaults(512, 1, 0.0, SamplerKind::EulerA),
        licence: STABILITY_COMMUNITY,
        gated: false,
        files: &SD21_FILES,
        borrowed: &[CLIP_B32_TOKENIZER],
    },
    CatalogEntry {
        id: "sdxl",
        name: "Stable Diffusion XL 1.0",
        repo: "stabilityai/stable-diffusion-xl-base-1.0",
        revision: "main",
        footprint: DenoiserFootprint::SDXL,
        capabilities: ALL_MODES,
        defaults: defaults(1024, 30, 5.0, SamplerKind::Dpmpp2mKarras),
        licence: OPENRAIL_PP,
        gated: false,
        files: &SDXL_FILES,
        borrowed: &[CLIP_L14_TOKENIZER, CLIP_BIG_G_TOKENIZER],
    },
    CatalogEntry {
        id: "sdxl-turbo",
        name: "SDXL-Turbo (1 step, 512)",
        repo: "stabilityai/sdxl-turbo",
        revision: "main",
        footprint: DenoiserFootprint::SDXL,
        capabilities: ALL_MODES,
        defaults: defaults(512, 1, 0.0, SamplerKind::EulerA),
        licence: STABILITY_COMMUNITY,
        gated: false,
        files: &SDXL_FILES,
        borrowed: &[CLIP_L14_TOKENIZER, CLIP_BIG_G_TOKENIZER],
    },
    CatalogEntry {
        id: "sdxl-inpaint",
        name: "SDXL 1.0 Inpainting 0.1",
        repo: "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
        revision: "main",
        footprint: DenoiserFootprint::SDXL,
        capabilities: INPAINT_ONLY,
        defaults: defaults(1024, 30, 8.0, SamplerKind::Dpmpp2mKarras),
        licence: OPENRAIL_PP,
        gated: false,
        files: &SDXL_FILES,
        borrowed: &[CLIP_L14_TOKENIZER, CLIP_BIG_G_TOKENIZER],
    },
    CatalogEntry {
        id: "flux-schnell",
        name: "FLUX.1 [schnell] (4 steps)",
        repo: "black-forest-labs/FLUX.1-schnell",
        revision: "main",
        footprint: DenoiserFootprint::FLUX1,
        capabilities: ALL_MODES,
        defaults: defaults(1024, 4, 0.0, SamplerKind::Euler),
        licence: "Apache-2.0",
        gated: false,
        files: &FLUX_SCHNELL_FILES,
        borrowed: &[CLIP_L14_TOKENIZER, T5_XXL_TOKENIZER],
    },
    CatalogEntry {
        id: "flux-schnell-gguf",
        name: "FLUX.1 [schnell], 4-bit GGUF transformer",
        repo: "black-forest-labs/FLUX.1-schnell",
        revision: "main",
        footprint: DenoiserFootprint::FLUX1,
        capabilities: ALL_MODES,
        defaults: defaults(1024, 4, 0.0, SamplerKind::Euler),
        licence: "Apache-2.0",
        gated: false,
        files: &FLUX_GGUF_FILES,
        borrowed: &[
            CLIP_L14_TOKENIZER,
            T5_XXL_TOKENIZER,
            gguf_transformer("flux1-schnell.gguf"),
        ],
    },
    CatalogEntry {
        id: "flux-dev",
        name: "FLUX.1 [dev] (28 steps)",
        repo: "black-forest-labs/FLUX.1-dev",
        revision: "main",
        footprint: DenoiserFootprint::FLUX1,
        capabilities: ALL_MODES,
        defaults: defaults(1024, 28, 3.5, SamplerKind::Euler),
        licence:
            "FLUX.1 [dev] Non-Commercial License: outputs may be used commercially, the model not",
        gated: true,
        files: &FLUX_DEV_FILES,
        borrowed: &[CLIP_L14_TOKENIZER, T5_XXL_TOKENIZER],
    },
    CatalogEntry {
        id: "flux-dev-gguf",
        name: "FLUX.1 [dev], 4-bit GGUF transformer",
        repo: "black-forest-labs/FLUX.1-dev",
        revision: "main",
        footprint: DenoiserFootprint::FLUX1,
        capabilities: ALL_MODES,
        defaults: defaults(1024, 28, 3.5, SamplerKind::Euler),
        licence:
            "FLUX.1 [dev] Non-Commercial License: outputs may be used commercially, the model not",
        gated: true,
        files: &FLUX_GGUF_FILES,
        borrowed: &[
            CLIP_L14_TOKENIZER,
            T5_XXL_TOKENIZER,
            gguf_transformer("flux1-dev.gguf"),
        ],
    },
    CatalogEntry {
        id: "flux2-klein-4b",
        name: "FLUX.2 [klein] 4B (edits with up to 4 references)",
        repo: "black-forest-labs/FLUX.2-klein-4B",
        revision: "main",
        footprint: DenoiserFootprint::FLUX2_KLEIN_4B,
        capabilities: EDIT_MODES,
        defaults: defaults(1024, 4, 1.0, SamplerKind::Euler),
        licence: "Apache-2.0 (huggingface.co/black-forest-labs/FLUX.2-klein-4B)",
        gated: false,
        files: &FLUX2_KLEIN_4B_FILES,
        borrowed: &[],
    },
    CatalogEntry {
        id: "flux2-klein-4b-q8",
        name: "FLUX.2 [klein] 4B, 8-bit GGUF transformer",
        repo: "black-forest-labs/FLUX.2-klein-4B",
        revision: "main",
        footprint: DenoiserFootprint::FLUX2_KLEIN_4B,
        capabilities: EDIT_MODES,
        defaults: defaults(1024, 4, 1.0, SamplerKind::Euler),
        licence: "Apache-2.0 (huggingface.co/black-forest-labs/FLUX.2-klein-4B)",
        gated: false,
        files: &FLUX2_KLEIN_4B_GGUF_FILES,
        borrowed: &[klein_4b_gguf("flux-2-klein-4b-Q8_0.gguf", 8.8)],
    },
    CatalogEntry {
        id: "flux2-klein-4b-q4",
        name: "FLUX.2 [klein] 4B, 4-bit GGUF transformer (least memory)",
        repo: "black-forest-labs/FLUX.2-klein-4B",
        revision: "main",
        footprint: DenoiserFootprint::FLUX2_KLEIN_4B,
        capabilities: EDIT_MODES,
        defaults: defaults(1024, 4, 1.0, SamplerKind::Euler),
        licence: "Apache-2.0 (huggingface.co/black-forest-labs/FLUX.2-klein-4B)",
        gated: false,
        files: &FLUX2_KLEIN_4B_GGUF_FILES,
        borrowed: &[klein_4b_gguf("flux-2-klein-4b-Q4_0.gguf", 5.1)],
    },
    CatalogEntry {
        id: "flux2-klein-9b",
        name: "FLUX.2 [klein] 9B (edits with up to 4 references)",
        repo: "black-forest-labs/FLUX.2-klein-9B",
        revision: "main",
        footprint: DenoiserFootprint::FLUX2_KLEIN_9B,
        capabilities: EDIT_MODES,
        defaults: defaults(1024, 4, 1.0, SamplerKind::Euler),
        licence: "FLUX Non-Commercial License: no commercial use (huggingface.co/black-forest-labs/FLUX.2-klein-9B)",
        gated: true,
        files: &FLUX2_KLEIN_9B_FILES,
        borrowed: &[],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_every_entry_has_its_configs() {
        let mut ids: Vec<&str> = entries().iter().map(|e| e.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), entries().len());
        for entry in entries() {
            let paths = entry.repo_paths(false);
            assert!(paths.contains(&"model_index.json"), "{}", entry.id);
            for part in [Part::TextEncoder, Part::Denoiser, Part::Vae] {
                assert!(
                    entry.weights().any(|w| w.part == part),
                    "{} {part:?}",
                    entry.id
                );
            }
            // Every tokenizer folder gets a tokenizer.json, own or borrowed.
            for folder in ["tokenizer", "tokenizer_2"] {
                let has_config =
                    paths.contains(&format!("{folder}/tokenizer_config.json").as_str());
                let json = format!("{folder}/tokenizer.json");
                let has_json = paths.contains(&json.as_str())
                    || entry.borrowed.iter().any(|b| b.place_at == json);
                assert_eq!(has_config, has_json, "{} {folder}", entry.id);
            }
        }
    }

    #[test]
    fn sizes_match_the_published_files() {
        let gb = |bytes: u64| bytes as f64 / 1e9;
        let sd15 = find("sd15").map(|e| e.approx_download_bytes(false));
        // unet 3.44 GB + text encoder 0.49 GB + VAE 0.33 GB in f32.
        assert!(
            sd15.is_some_and(|b| (4.2..4.35).contains(&gb(b))),
            "{sd15:?}"
        );
        let sd15_fp16 = find("sd15").map(|e| e.approx_download_bytes(true));
        assert!(sd15_fp16.is_some_and(|b| (2.1..2.2).contains(&gb(b))));
        // flux1-schnell.safetensors 23.8 GB + T5 9.5 GB + CLIP 0.25 GB + AE 0.34 GB.
        let flux = find("black-forest-labs/FLUX.1-schnell").map(|e| e.approx_download_bytes(false));
        assert!(
            flux.is_some_and(|b| (33.5..34.2).contains(&gb(b))),
            "{flux:?}"
        );
        assert_eq!(find("FLUX-DEV").map(|e| e.gated), Some(true));
        assert!(find("no-such-model").is_none());
    }
}
