//! The loadable parts of a model, shared by every family.

/// A loadable part of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// The first (or only) text encoder and its tokenizer.
    TextEncoder,
    /// SDXL's second CLIP text encoder, or FLUX's T5, with its tokenizer.
    TextEncoder2,
    /// The Stable Diffusion denoiser.
    Unet,
    /// The FLUX denoiser.
    Transformer,
    /// The autoencoder.
    Vae,
}

impl Component {
    /// The folder and display name of the component.
    pub fn name(self) -> &'static str {
        match self {
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
            Component::Unet => "unet",
            Component::Transformer => "transformer",
            Component::Vae => "vae",
        }
    }

    /// Whether it is a text encoder (dropped first in low-memory mode).
    pub fn is_text_encoder(self) -> bool {
        matches!(self, Component::TextEncoder | Component::TextEncoder2)
    }
}
