//! Easel: local diffusion models for artists. This library is the engine (no UI in it): model
//! loading, schedulers, pipelines and the background inference thread, usable headless.

pub mod atomic_file;
pub mod bench;
pub mod device;
pub mod engine;
pub mod families;
pub mod hub;
pub mod image_file;
pub mod models;
/// Easel's own kernels (a crate of their own, optimised in every build).
pub use easel_ops as ops;
pub mod output;
pub mod pipeline;
pub mod replay;
pub mod schedulers;
pub mod settings;
