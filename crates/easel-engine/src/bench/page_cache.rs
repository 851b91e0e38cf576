//! Dropping weight files from the OS page cache, so that a "cold" load really reads the disk.

use std::path::{Path, PathBuf};

/// Every `.safetensors` file in `model_dir` and its component folders.
pub fn weight_files(model_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![model_dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(model_dir) {
        dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        files.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors")),
        );
    }
    files.sort();
    files
}

/// Asks the OS to forget the cached pages of `files` (`posix_fadvise(DONTNEED)`); true when
/// it accepted for every file. Only Linux can; elsewhere the next load may be served from
/// memory and this returns false.
pub fn evict(files: &[PathBuf]) -> bool {
    files.iter().all(|path| evict_one(path))
}

#[cfg(target_os = "linux")]
fn evict_one(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn evict_one(_path: &Path) -> bool {
    false
}
