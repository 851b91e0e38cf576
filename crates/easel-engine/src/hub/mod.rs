//! Models from the Hugging Face Hub: the catalog Easel offers, the cache layout on disk
//! (Easel's `models` folder and the user's own hub cache), downloads that resume and check
//! what arrived, and the "will it fit" estimate. No UI code, and no network outside
//! `download`.

pub mod cache;
pub mod catalog;
pub mod download;
pub mod error;
pub mod fit;
pub mod install;
pub mod token;

pub use cache::CacheRoots;
pub use download::{DownloadProgress, HubClient};
pub use error::HubError;
pub use install::{download, locate, model_folder, Downloaded, Located, ModelRef};
pub use token::HubToken;
