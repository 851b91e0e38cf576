//! The window's side of the Models window: starting and cancelling downloads on the engine,
//! and offering a downloaded model in the prompt panel.

use super::*;
use easel_engine::device::Precision;
use easel_engine::engine::DownloadRequest;
use easel_engine::hub::fit;
use models_panel::{ModelsAction, ModelsContext};

impl EaselApp {
    /// Where models are looked for: the models folder, then the user's hub cache.
    pub(super) fn cache_roots(&self) -> CacheRoots {
        CacheRoots::with_user_cache(&self.paths.models_dir)
    }

    /// What the Models window judges sizes against: the latest memory report and the
    /// engine's precision.
    pub(super) fn models_context(&self) -> ModelsContext {
        let memory = self.status.memory.as_ref();
        let free_bytes = memory.and_then(|m| fit::free_bytes(m.device_bytes, m.system_bytes));
        ModelsContext {
            free_bytes,
            precision: self
                .engine
                .engine()
                .map_or(Precision::CPU_DEFAULT, |engine| engine.precision()),
            fp16_files: self
                .engine
                .engine()
                .is_ok_and(|engine| engine.half_precision()),
        }
    }

    pub(super) fn act_on_models(&mut self, action: ModelsAction) {
        match action {
            ModelsAction::Download(entry, token) => {
                let request = DownloadRequest {
                    model: entry.id.to_string(),
                    roots: self.cache_roots(),
                    prefer_fp16: self.models_context().fp16_files,
                    endpoint: self.hub_endpoint.clone(),
                    token,
                };
                match self.engine.engine().and_then(|e| e.download(request)) {
                    Ok(download) => self.models_panel.started(entry.id, download),
                    Err(_) => self
                        .status
                        .show_error("The engine stopped: restart it, then download again"),
                }
            }
            ModelsAction::Cancel(download) => {
                if self
                    .engine
                    .engine()
                    .and_then(|e| e.cancel_download(download))
                    .is_err()
                {
                    self.status
                        .show_error("The engine stopped; the download ended with it");
                }
            }
            ModelsAction::Use(folder) => self.use_model_folder(&folder, true),
        }
    }

    /// Adds the model in `folder` to the picker (once); picks it when `pick`.
    pub(super) fn use_model_folder(&mut self, folder: &std::path::Path, pick: bool) {
        match read_model(folder) {
            Ok(entry) => {
                if pick {
                    self.prompt.settings.pick_model(&entry);
                }
                if !self.models.iter().any(|m| m.dir == entry.dir) {
                    self.models.push(entry);
                }
            }
            Err(error) => self.status.show_error(error),
        }
    }
}
