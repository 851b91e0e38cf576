//! Shared helpers: where the parity models are, and copies of them to damage.

#![allow(dead_code)]

pub mod fake_hub;
pub mod jobs;

use std::path::{Path, PathBuf};

/// Where the parity goldens are looked for: `EASEL_PARITY_DIR`, else `../shared/parity`.
fn parity_location() -> PathBuf {
    std::env::var_os("EASEL_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parity"))
}

/// Whether the parity goldens (and their tiny models) are absent, so that the calling test
/// should return at once. A fresh clone without `../shared` still passes the other tests;
/// this says once per test program where it looked. With `EASEL_REQUIRE_PARITY=1` (CI sets
/// it) their absence fails the test instead, so they can never be skipped there.
pub fn parity_missing() -> bool {
    let dir = parity_location();
    if dir.join("cases").is_dir() && dir.join("models").is_dir() {
        return false;
    }
    let required = std::env::var("EASEL_REQUIRE_PARITY").is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "EASEL_REQUIRE_PARITY is set but the parity goldens are not at {} (expected cases/ and \
         models/ there): check out ../shared beside the repository or set EASEL_PARITY_DIR",
        dir.display()
    );
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        use std::io::Write;
        // Straight to the process's stderr, past the test harness's capture, so it is seen.
        writeln!(
            std::io::stderr(),
            "note: the tests that need the parity goldens are skipped: nothing at {} (check \
             out ../shared beside the repository, or set EASEL_PARITY_DIR)",
            dir.display()
        )
        .ok();
    });
    true
}

/// `../shared/parity`, or `EASEL_PARITY_DIR`. Panics with a clear message when absent; tests
/// call `parity_missing` first.
pub fn parity_dir() -> PathBuf {
    let dir = parity_location();
    assert!(
        dir.join("cases").is_dir() && dir.join("models").is_dir(),
        "the parity goldens are not at {} (expected cases/ and models/ there): check out ../shared \
         beside the repository or set EASEL_PARITY_DIR",
        dir.display()
    );
    dir
}

/// Every file under `dir`, recursively, as paths relative to it.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).expect("inside");
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found
}

/// A parity model folder by name.
pub fn model(name: &str) -> PathBuf {
    parity_dir().join("models").join(name)
}

/// Copies a parity model into a temporary folder (writable, so tests can damage it).
pub fn copy_model(name: &str) -> (tempfile::TempDir, PathBuf) {
    copy_model_from(&model(name))
}

/// Copies any model folder into a temporary folder (writable, so tests can change it).
pub fn copy_model_from(folder: &Path) -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().expect("a temporary folder");
    let target = temp.path().join(folder.file_name().expect("a folder name"));
    copy_dir(folder, &target);
    (temp, target)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("folder entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
            let mut perms = std::fs::metadata(&target).expect("metadata").permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&target, perms).expect("make writable");
        }
    }
}

/// A test image with some structure: gradients and a disk.
pub fn test_image(width: u32, height: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        let inside = (x as i64 - width as i64 / 2).pow(2) + (y as i64 - height as i64 / 3).pow(2)
            < (width.min(height) as i64 / 5).pow(2);
        if inside {
            image::Rgb([250, 240, 30])
        } else {
            image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
        }
    })
}

/// A mask repainting a rectangle in the left half, with one soft (grey) column at its edge.
pub fn test_mask(width: u32, height: u32) -> image::GrayImage {
    image::GrayImage::from_fn(width, height, |x, y| {
        let in_rows = y >= height / 4 && y < height * 3 / 4;
        if in_rows && x >= width / 8 && x < width / 2 {
            image::Luma([255])
        } else if in_rows && x == width / 2 {
            image::Luma([128])
        } else {
            image::Luma([0])
        }
    })
}
