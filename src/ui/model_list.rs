//! The models the picker offers: model folders under the models directory (the catalog's
//! downloaded models among them) and folders the user opened. Only their facts are read
//! here (`ModelInfo`, from configs); weights load in the engine.

use std::path::Path;

use easel_engine::families::ModelInfo;

/// A model the picker can offer: its facts.
pub type ModelEntry = ModelInfo;

/// Reads the facts of the model in `path`; the error says which file is wrong.
pub fn read_model(path: &Path) -> Result<ModelEntry, String> {
    ModelInfo::read(path).map_err(|e| e.to_string())
}

/// Every model folder found directly under `dir`, and the catalog's downloaded models
/// (`dir/catalog/<id>`, named as the catalog names them). Ones that fail to read are skipped:
/// they are reported when picked by hand.
pub fn scan_models_dir(dir: &Path) -> Vec<ModelEntry> {
    let mut found = model_folders_in(dir);
    found.extend(model_folders_in(&dir.join("catalog")));
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

fn model_folders_in(dir: &Path) -> Vec<ModelEntry> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model_index.json").is_file())
        .filter_map(|p| ModelInfo::read(&p).ok())
        .collect()
}
