//! The loadable parts of a model, shared by every family, and what every opened model does
//! with them.

use std::time::Duration;

use super::error::ModelError;
use super::weights::WeightCount;

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

/// An opened model's weights, component by component: what the engine's residency and the
/// staged runner use, whatever the family.
pub trait ModelWeights: Send + std::fmt::Debug {
    /// The components every job needs, in pipeline order.
    fn components(&self) -> Vec<Component>;
    /// Whether `component` is in memory.
    fn is_loaded(&self, component: Component) -> bool;
    /// Loads `component` if it is not loaded, returning how long that took.
    fn load(&mut self, component: Component) -> Result<Duration, ModelError>;
    /// Drops `component`'s weights.
    fn unload(&mut self, component: Component);
    /// Drops every component.
    fn unload_all(&mut self);
    /// What `component`'s weight files hold, loaded or not.
    fn file_weights(&self, component: Component) -> WeightCount;
    /// Bytes `component` holds once loaded (its floating-point weights at the precision the
    /// model loads them in).
    fn held_bytes(&self, component: Component) -> u64;
    /// Bytes of weight files behind each loaded component.
    fn loaded_bytes(&self) -> &[(Component, u64)];
}
