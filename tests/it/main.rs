//! Every integration test in one binary (one link of candle instead of one per file), a module
//! per subject. `common` has the parity paths, job and event helpers, and the fake hub.

// Tests may panic on setup failures: that is how a test reports them.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod boundaries;
mod canvas_edit;
mod cli;
mod cli_faults;
mod common;
mod engine;
mod families;
mod flux;
mod flux2;
mod flux2_gguf;
mod hub;
mod hub_faults;
mod parity;
mod settings;
mod vae_tiling;
