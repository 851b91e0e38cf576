//! Which models stay loaded between jobs: the cache of opened models, the order their
//! components were last used in, and the decisions each `ResidencyPolicy` makes. The
//! decisions are pure functions of sizes, use order and instants, so tests give them any
//! clock they like.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::memory::HeldWeights;
use super::messages::ResidencyPolicy;
use crate::families::LoadedModel;
use crate::models::component::Component;
use crate::pipeline::request::Adapter;

/// How long to wait for the next request before the policy unloads by itself: `None` to wait
/// without limit, `Some(ZERO)` when the time is already up.
pub fn idle_wait(
    policy: ResidencyPolicy,
    anything_loaded: bool,
    idle_since: Instant,
    now: Instant,
) -> Option<Duration> {
    match policy {
        ResidencyPolicy::UnloadWhenIdle(idle) if anything_loaded => {
            Some(idle.saturating_sub(now.saturating_duration_since(idle_since)))
        }
        _ => None,
    }
}

/// The loaded parts to drop, least recently used first, until the rest plus `reserve_bytes`
/// fit in `budget_bytes`. `loaded` is `(key, bytes, last use)`, a larger last use being more
/// recent.
pub fn evictions<K: Clone>(
    loaded: &[(K, u64, u64)],
    budget_bytes: u64,
    reserve_bytes: u64,
) -> Vec<K> {
    let mut by_age: Vec<&(K, u64, u64)> = loaded.iter().collect();
    by_age.sort_by_key(|(_, _, last_use)| *last_use);
    let mut held: u64 = loaded.iter().map(|(_, bytes, _)| bytes).sum();
    let mut dropped = Vec::new();
    for (key, bytes, _) in by_age {
        if held + reserve_bytes <= budget_bytes {
            break;
        }
        held -= bytes;
        dropped.push(key.clone());
    }
    dropped
}

/// Opened models kept between jobs, with the last use of each loaded component.
#[derive(Debug, Default)]
pub struct ModelCache {
    entries: Vec<CachedModel>,
    /// Counts uses; a larger value is more recent.
    uses: u64,
}

#[derive(Debug)]
struct CachedModel {
    model: Box<dyn LoadedModel>,
    /// What it is cached under: its folder and the adapters applied to its weights.
    key: CacheKey,
    /// `(component, use)` of each component the model has loaded.
    last_use: Vec<(Component, u64)>,
}

impl ModelCache {
    /// Takes the model opened from `dir` with `adapters` applied out of the cache, if it is
    /// there (the same folder with other adapters is another model).
    pub fn take(&mut self, dir: &Path, adapters: &[Adapter]) -> Option<Box<dyn LoadedModel>> {
        let wanted = CacheKey::new(dir, adapters);
        let index = self.entries.iter().position(|e| e.key == wanted)?;
        Some(self.entries.remove(index).model)
    }

    /// Puts `model`, loaded with `adapters`, back after a job, its loaded components used
    /// now in pipeline order.
    pub fn put(&mut self, model: Box<dyn LoadedModel>, adapters: &[Adapter]) {
        let key = CacheKey::new(model.dir(), adapters);
        let mut last_use = Vec::new();
        for component in model.components() {
            if model.is_loaded(component) {
                self.uses += 1;
                last_use.push((component, self.uses));
            }
        }
        self.entries.push(CachedModel {
            model,
            key,
            last_use,
        });
    }

    /// Whether any weights are held.
    pub fn is_empty(&self) -> bool {
        self.entries
            .iter()
            .all(|e| e.model.loaded_bytes().is_empty())
    }

    /// Drops every model.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Drops every model but the one put last.
    pub fn keep_latest(&mut self) {
        let keep_from = self.entries.len().saturating_sub(1);
        self.entries.drain(..keep_from);
    }

    /// Drops least recently used components (of any model) until what stays plus
    /// `reserve_bytes` fits in `budget_bytes`; returns what was dropped.
    pub fn fit(&mut self, budget_bytes: u64, reserve_bytes: u64) -> Vec<(PathBuf, Component)> {
        let loaded: Vec<((usize, Component), u64, u64)> = self
            .entries
            .iter()
            .enumerate()
            .flat_map(|(index, entry)| {
                entry
                    .model
                    .loaded_bytes()
                    .iter()
                    .map(move |(component, bytes)| {
                        let last_use = entry
                            .last_use
                            .iter()
                            .find(|(c, _)| c == component)
                            .map_or(0, |(_, used)| *used);
                        ((index, *component), *bytes, last_use)
                    })
            })
            .collect();
        let dropped: Vec<(PathBuf, Component)> = evictions(&loaded, budget_bytes, reserve_bytes)
            .into_iter()
            .map(|(index, component)| {
                let entry = &mut self.entries[index];
                entry.model.unload(component);
                (entry.model.dir().to_path_buf(), component)
            })
            .collect();
        self.entries
            .retain(|entry| !entry.model.loaded_bytes().is_empty());
        dropped
    }

    /// The weights held, per model and component.
    pub fn held(&self) -> Vec<HeldWeights> {
        self.entries
            .iter()
            .flat_map(|entry| held_by(entry.model.as_ref()))
            .collect()
    }
}

/// The weights a job of `model` holds at most: every component, as loaded.
pub fn job_bytes(model: &dyn LoadedModel) -> u64 {
    model
        .components()
        .into_iter()
        .map(|c| model.held_bytes(c))
        .sum()
}

/// The weights `model` holds now, per component.
pub fn held_by(model: &dyn LoadedModel) -> Vec<HeldWeights> {
    let name = model.dir().file_name().map_or_else(
        || model.dir().display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    model
        .loaded_bytes()
        .iter()
        .map(|(component, bytes)| HeldWeights {
            model: name.clone(),
            component: component.name(),
            bytes: *bytes,
        })
        .collect()
}

/// What a loaded model is cached under: weights with a LoRA merged in are not the plain ones.
#[derive(Debug, Clone, PartialEq)]
struct CacheKey {
    /// The model folder, canonical (a link and its target are one model).
    dir: PathBuf,
    /// The adapters applied, in order.
    adapters: Vec<Adapter>,
}

impl CacheKey {
    fn new(dir: &Path, adapters: &[Adapter]) -> Self {
        Self {
            dir: canonical(dir),
            adapters: adapters.to_vec(),
        }
    }
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_with_adapters_is_cached_apart_from_the_plain_one() {
        let dir = Path::new("/models/sd15");
        let lora = |scale: f64| Adapter::Lora {
            file: PathBuf::from("/loras/ink.safetensors"),
            scale,
        };
        let plain = CacheKey::new(dir, &[]);
        assert_eq!(plain, CacheKey::new(dir, &[]));
        assert_ne!(plain, CacheKey::new(dir, &[lora(0.8)]));
        assert_ne!(
            CacheKey::new(dir, &[lora(0.8)]),
            CacheKey::new(dir, &[lora(0.5)])
        );
        assert_eq!(
            CacheKey::new(dir, &[lora(0.8)]),
            CacheKey::new(dir, &[lora(0.8)])
        );
    }

    #[test]
    fn idle_unload_waits_out_the_rest_of_the_idle_time() {
        let minute = Duration::from_secs(60);
        let policy = ResidencyPolicy::UnloadWhenIdle(10 * minute);
        let start = Instant::now();
        assert_eq!(
            idle_wait(policy, true, start, start + 9 * minute),
            Some(minute)
        );
        assert_eq!(
            idle_wait(policy, true, start, start + 11 * minute),
            Some(Duration::ZERO)
        );
        // Nothing loaded, or another policy: wait for requests without a limit.
        assert_eq!(idle_wait(policy, false, start, start + 11 * minute), None);
        for other in [
            ResidencyPolicy::KeepLoaded,
            ResidencyPolicy::UnloadAfterJob,
            ResidencyPolicy::MemoryBudget(1),
        ] {
            assert_eq!(idle_wait(other, true, start, start + 60 * minute), None);
        }
    }

    #[test]
    fn budget_evicts_least_recently_used_first_and_only_what_it_must() {
        // (name, bytes, last use)
        let loaded = [
            ("a.unet", 40, 3),
            ("a.text", 10, 1),
            ("b.unet", 40, 7),
            ("b.vae", 5, 8),
        ];
        assert!(evictions(&loaded, 95, 0).is_empty());
        assert_eq!(evictions(&loaded, 90, 0), ["a.text"]);
        assert_eq!(evictions(&loaded, 60, 0), ["a.text", "a.unet"]);
        // Room for 40 more bytes to load.
        assert_eq!(evictions(&loaded, 90, 40), ["a.text", "a.unet"]);
        assert_eq!(
            evictions(&loaded, 0, 0),
            ["a.text", "a.unet", "b.unet", "b.vae"]
        );
    }
}
