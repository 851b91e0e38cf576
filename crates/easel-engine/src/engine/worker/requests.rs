//! What each request does: one handler, whether a job is running or not.

use std::time::Instant;

use super::Worker;
use crate::engine::messages::{Event, JobId, Request};

impl Worker {
    /// Takes one request; `running` is the job under way, if any. Returns whether that job
    /// must stop (cancelled, or the engine shuts down).
    pub(super) fn handle(&mut self, request: Request, running: Option<JobId>) -> bool {
        match request {
            Request::Generate { job, request } => {
                self.outbox.send(Event::Queued { job });
                self.pending.push_back((job, request));
                false
            }
            Request::Cancel(job) if running == Some(job) => true,
            Request::Cancel(job) => {
                self.cancel_pending(job);
                false
            }
            Request::Unload if running.is_some() => {
                // Honoured when the running job, which needs its model, ends.
                self.unload_after_job = true;
                false
            }
            Request::Unload => {
                self.unload();
                false
            }
            Request::SetResidency(policy) => {
                self.residency = policy;
                if running.is_none() {
                    self.idle_since = Instant::now();
                }
                false
            }
            // Never sent here: the engine's handle serves downloads on their own threads, so
            // that none waits behind a load (see `Engine::send`).
            Request::Download { .. } | Request::CancelDownload(_) => false,
            Request::Shutdown => {
                self.shutting_down = true;
                running.is_some()
            }
        }
    }

    /// Takes every waiting request without blocking; true when the running job must stop.
    pub(super) fn poll(&mut self, running: JobId) -> bool {
        let mut stop = self.outbox.listener_gone();
        while let Ok(request) = self.requests.try_recv() {
            stop |= self.handle(request, Some(running));
        }
        stop
    }
}
