//! Downloads beside the engine thread, each on its own named thread, started and cancelled by
//! the engine's handle itself: a download never waits behind a model load or a step, and
//! never holds up a generation. Their progress and endings reach the same event stream.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::error::panic_message;
use super::messages::{DownloadId, DownloadRequest, Event};
use super::outbox::Outbox;
use crate::hub::{self, Downloaded, HubClient, HubError, ModelRef};

/// The downloads under way, by id, with their cancel flags.
#[derive(Default)]
pub(super) struct Downloads {
    running: HashMap<DownloadId, (Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Downloads {
    /// Starts `request` on a thread of its own; its events go to `outbox`.
    pub(super) fn start(&mut self, download: DownloadId, request: DownloadRequest, outbox: Outbox) {
        self.running.retain(|_, (_, thread)| !thread.is_finished());
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        let failed_outbox = outbox.detached();
        let spawned = std::thread::Builder::new()
            .name(format!("download-{download}"))
            .spawn(move || run(download, &request, &flag, &outbox));
        match spawned {
            Ok(thread) => {
                self.running.insert(download, (cancel, thread));
            }
            Err(error) => {
                failed_outbox.send(Event::DownloadFailed {
                    download,
                    error: HubError::Hub {
                        repo: String::new(),
                        message: format!("the download thread could not start: {error}"),
                    },
                });
            }
        }
    }

    /// Asks `download` to stop after its current chunk (its bytes are kept).
    pub(super) fn cancel(&self, download: DownloadId) {
        if let Some((flag, _)) = self.running.get(&download) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Asks every download to stop.
    pub(super) fn cancel_all(&self) {
        for (flag, _) in self.running.values() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

fn run(download: DownloadId, request: &DownloadRequest, cancel: &AtomicBool, outbox: &Outbox) {
    // A panic must still end the download for the listener, or the window waits forever.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        fetch(download, request, cancel, outbox)
    }))
    .unwrap_or_else(|panic| {
        Err(HubError::Hub {
            repo: request.model.clone(),
            message: format!("the download crashed: {}", panic_message(panic.as_ref())),
        })
    });
    let event = match outcome {
        Ok(outcome) => {
            tracing::info!(download, model = %request.model, folder = %outcome.located().folder.display(), "download finished");
            Event::DownloadFinished { download, outcome }
        }
        Err(error) => {
            tracing::warn!(download, model = %request.model, %error, "download ended");
            Event::DownloadFailed { download, error }
        }
    };
    outbox.send(event);
}

fn fetch(
    download: DownloadId,
    request: &DownloadRequest,
    cancel: &AtomicBool,
    outbox: &Outbox,
) -> Result<Downloaded, HubError> {
    ModelRef::parse(&request.model).and_then(|model| {
        let client = HubClient::new(request.endpoint.as_deref(), request.token.clone())?;
        hub::download(
            model,
            &client,
            &request.roots,
            request.prefer_fp16,
            cancel,
            &mut |progress| {
                let event = Event::DownloadProgress {
                    download,
                    progress: progress.clone(),
                };
                // Nobody listens any more: stop at the next chunk.
                if !outbox.send(event) {
                    cancel.store(true, Ordering::Relaxed);
                }
            },
        )
    })
}
