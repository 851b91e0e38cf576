//! The layout's boundaries, kept by tests: the engine crate has no UI crate anywhere in its
//! dependency tree, and the window's sources name no candle path (it talks to the engine
//! through messages and `ModelInfo`).

use std::path::Path;

#[test]
fn the_engine_crate_depends_on_no_ui_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--offline",
            "-p",
            "easel-engine",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(tree.lines().count() > 50, "{tree}");
    for ui_crate in [
        "egui",
        "eframe",
        "winit",
        "rfd",
        "wgpu",
        "accesskit",
        "indicatif",
        "clap",
    ] {
        let found: Vec<&str> = tree
            .lines()
            .filter(|line| line.split_whitespace().next() == Some(ui_crate))
            .collect();
        assert!(
            found.is_empty(),
            "{ui_crate} in the engine's tree: {found:?}"
        );
    }
}

#[test]
fn the_window_names_no_candle_path() {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ui");
    let mut pending = vec![ui];
    let mut offenders = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/ui").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read a source");
                if text.contains("candle_") {
                    offenders.push(path.display().to_string());
                }
            }
        }
    }
    assert!(offenders.is_empty(), "candle in the window: {offenders:?}");
}
