//! What survives a restart: prompt and settings, brush, the references (by path; pasted
//! images are kept as PNGs in the data folder) with their masks (as PNGs beside the session
//! file). Written atomically, so a crash mid-write keeps
//! the previous session.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::canvas::BrushSettings;
use super::prompt_panel::PromptSettings;

/// A reference image to reopen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedReference {
    /// The image file.
    pub path: PathBuf,
    /// Its mask, a file name in the masks folder, if one was painted.
    pub mask_file: Option<String>,
    /// Whether it was the init image.
    pub is_init: bool,
    /// Whether it was an edit reference (references keep their panel order).
    #[serde(default)]
    pub is_edit: bool,
    /// The files of the images it showed before results replaced it, oldest first.
    #[serde(default)]
    pub versions: Vec<PathBuf>,
}

/// The session file's contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Session {
    /// The prompt panel.
    pub prompt: PromptSettings,
    /// The brush.
    pub brush: BrushSettings,
    /// References with paths, in order.
    pub references: Vec<SavedReference>,
    /// Model folders opened by hand.
    pub opened_models: Vec<PathBuf>,
}

/// The file names the session keeps in its folder.
pub const SESSION_FILE: &str = "session.json";
/// The folder the masks go in, inside the data folder.
pub const MASKS_DIR: &str = "masks";
/// The folder pasted images are kept in, inside the data folder.
pub const PASTED_DIR: &str = "pasted";

impl Session {
    /// Reads the session in `data_dir`. A missing file is a fresh start; an unreadable one is
    /// reported and also starts fresh (the bad file is kept aside for the user).
    pub fn load(data_dir: &Path) -> (Self, Option<String>) {
        let path = data_dir.join(SESSION_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Self::default(), None),
            Err(e) => {
                return (
                    Self::default(),
                    Some(format!(
                        "could not read the last session {}: {e}",
                        path.display()
                    )),
                )
            }
        };
        match serde_json::from_str(&text) {
            Ok(session) => (session, None),
            Err(e) => {
                let aside = path.with_extension("json.bad");
                let kept = std::fs::rename(&path, &aside).is_ok();
                let note = if kept {
                    format!("; it was kept as {}", aside.display())
                } else {
                    String::new()
                };
                (
                    Self::default(),
                    Some(format!(
                        "the last session {} is damaged ({e}), so Easel started fresh{note}",
                        path.display()
                    )),
                )
            }
        }
    }

    /// Writes the session into `data_dir` (temporary file, then rename).
    pub fn save(&self, data_dir: &Path) -> Result<(), String> {
        let path = data_dir.join(SESSION_FILE);
        let fail = |e: &dyn std::fmt::Display| {
            format!("could not save the session to {}: {e}", path.display())
        };
        std::fs::create_dir_all(data_dir).map_err(|e| fail(&e))?;
        let text = serde_json::to_string_pretty(self).map_err(|e| fail(&e))?;
        easel_engine::atomic_file::write_bytes(&path, text.as_bytes()).map_err(|e| fail(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_round_trips_and_a_damaged_one_starts_fresh_and_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut session = Session::default();
        session.prompt.prompt = "a lighthouse".into();
        session.references.push(SavedReference {
            path: "/images/a.png".into(),
            mask_file: Some("mask-0.png".into()),
            is_init: true,
            is_edit: false,
            versions: vec!["/outputs/00001.png".into()],
        });
        session.save(dir.path()).expect("save");
        assert_eq!(Session::load(dir.path()), (session, None));

        std::fs::write(dir.path().join(SESSION_FILE), "{ not json").expect("write");
        let (fresh, problem) = Session::load(dir.path());
        assert_eq!(fresh, Session::default());
        assert!(problem.expect("reported").contains("damaged"));
        assert!(dir.path().join("session.json.bad").is_file());
    }
}
