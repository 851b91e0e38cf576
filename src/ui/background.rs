//! Work the UI thread must not wait for (decoding images, writing files), run on named
//! threads; results are collected once per frame and the window is woken when one is ready.

use crossbeam_channel::{bounded, Receiver, Sender};
use eframe::egui;

/// Results in flight at once before a finished worker waits to hand its result over.
const RESULTS_CAPACITY: usize = 64;

/// A set of background jobs producing `T`.
pub struct Background<T> {
    results_tx: Sender<T>,
    results_rx: Receiver<T>,
    running: usize,
}

impl<T: Send + 'static> Default for Background<T> {
    fn default() -> Self {
        let (results_tx, results_rx) = bounded(RESULTS_CAPACITY);
        Self {
            results_tx,
            results_rx,
            running: 0,
        }
    }
}

impl<T: Send + 'static> Background<T> {
    /// Runs `work` on a thread named `name`; its result comes out of `poll` after it ends.
    pub fn spawn(
        &mut self,
        name: &str,
        ctx: &egui::Context,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<(), String> {
        let results = self.results_tx.clone();
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // The receiver lives as long as the window; a failed send means it closed.
                if results.send(work()).is_ok() {
                    ctx.request_repaint();
                }
            })
            .map_err(|e| format!("could not start a background thread: {e}"))?;
        self.running += 1;
        Ok(())
    }

    /// The results that arrived since the last call.
    pub fn poll(&mut self) -> Vec<T> {
        let done: Vec<T> = self.results_rx.try_iter().collect();
        self.running = self.running.saturating_sub(done.len());
        done
    }

    /// Whether a job is still running.
    pub fn is_busy(&self) -> bool {
        self.running > 0
    }
}
