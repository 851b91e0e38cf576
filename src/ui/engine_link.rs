//! The window's side of the engine: started on the first frame with a wake-up that requests
//! a repaint, drained once per frame, and restartable if its thread dies.

use easel_engine::engine::{Engine, EngineConfig, EngineStopped, Event, JobId};
use easel_engine::pipeline::request::GenerateRequest;
use eframe::egui;

/// The engine as the window sees it.
pub enum EngineLink {
    /// Not started yet (the first frame starts it).
    NotStarted,
    /// Running.
    Running(Engine),
    /// Its thread ended or could not start; the window offers a restart.
    Stopped {
        /// Why, in words for the user.
        reason: String,
    },
}

impl EngineLink {
    /// Starts the engine if it is not running; `ctx` is woken after every event.
    pub fn start(&mut self, ctx: &egui::Context, config: &EngineConfig) {
        if matches!(self, EngineLink::Running(_)) {
            return;
        }
        let ctx = ctx.clone();
        let wake = std::sync::Arc::new(move || ctx.request_repaint());
        *self = match Engine::spawn(config.clone(), wake) {
            Ok(engine) => EngineLink::Running(engine),
            Err(error) => EngineLink::Stopped {
                reason: error.to_string(),
            },
        };
    }

    /// Every event that arrived since the last frame. Notices when the thread has died.
    pub fn drain(&mut self) -> Vec<Event> {
        let EngineLink::Running(engine) = self else {
            return Vec::new();
        };
        let events: Vec<Event> = engine.events().try_iter().collect();
        if !engine.is_running() && engine.events().is_empty() {
            *self = EngineLink::Stopped {
                reason: "the engine thread stopped".to_string(),
            };
        }
        events
    }

    /// The running engine.
    pub fn engine(&self) -> Result<&Engine, EngineStopped> {
        match self {
            EngineLink::Running(engine) => Ok(engine),
            _ => Err(EngineStopped),
        }
    }

    /// Queues a generation.
    pub fn generate(&mut self, request: GenerateRequest) -> Result<JobId, EngineStopped> {
        let result = self.engine()?.generate(request);
        if result.is_err() {
            self.mark_stopped();
        }
        result
    }

    /// Cancels a job.
    pub fn cancel(&mut self, job: JobId) -> Result<(), EngineStopped> {
        let result = self.engine()?.cancel(job);
        if result.is_err() {
            self.mark_stopped();
        }
        result
    }

    fn mark_stopped(&mut self) {
        *self = EngineLink::Stopped {
            reason: EngineStopped.to_string(),
        };
    }
}
