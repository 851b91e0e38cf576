//! Errors the engine reports for a job, and the one its handle returns.

use crate::device::DeviceError;
use crate::pipeline::PipelineError;

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The pipeline refused or failed the job.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The job panicked; the panic was caught and the engine still serves.
    #[error("the job crashed ({0}); the engine is still running, so try again or report this")]
    Panicked(String),
    /// The engine thread could not be started.
    #[error("the engine could not start: {0}")]
    Start(String),
    /// The device could not be opened.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// The engine thread is gone: a request could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine has stopped; restart it to go on (your inputs are kept)")]
pub struct EngineStopped;

/// The text a panic carried, for the message that reports it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_string()
    }
}
