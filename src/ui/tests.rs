//! The window driven through its accessibility tree with egui_kittest, on the tiny parity
//! models and a real engine thread on the CPU.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use easel_engine::device::DeviceChoice;
use easel_engine::engine::{EngineConfig, Fault, FaultPoint};
use eframe::egui::{self, accesskit::Role, Event, Key, Modifiers, PointerButton, Pos2, Vec2};
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;

use super::{AppPaths, EaselApp};

/// Whether the parity models are absent, so that the calling test returns at once: said once,
/// naming where they were looked for; a failure instead under `EASEL_REQUIRE_PARITY=1` (CI).
fn parity_missing() -> bool {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parity");
    if dir.join("models").is_dir() {
        return false;
    }
    let required = std::env::var("EASEL_REQUIRE_PARITY").is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "EASEL_REQUIRE_PARITY is set but the parity models are not at {}",
        dir.display()
    );
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        use std::io::Write;
        writeln!(
            std::io::stderr(),
            "note: the window tests that need the parity models are skipped: nothing at {} \
             (check out ../shared beside the repository)",
            dir.display()
        )
        .ok();
    });
    true
}

/// A test's folders: models (just the tiny SD 1.5), outputs and the session.
struct Folders {
    root: tempfile::TempDir,
}

impl Folders {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let parity =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parity/models/sd15-tiny");
        assert!(
            parity.is_dir(),
            "the tiny parity model is not at {}: check out ../shared beside the repository",
            parity.display()
        );
        let models = root.path().join("models");
        std::fs::create_dir_all(&models).expect("models dir");
        std::os::unix::fs::symlink(
            parity.canonicalize().expect("canonical"),
            models.join("sd15-tiny"),
        )
        .expect("link the model");
        Self { root }
    }

    fn paths(&self) -> AppPaths {
        AppPaths {
            models_dir: self.root.path().join("models"),
            outputs_dir: self.root.path().join("outputs"),
            data_dir: self.root.path().join("data"),
        }
    }

    /// A 64x64 test picture.
    fn picture(&self, name: &str) -> PathBuf {
        let path = self.root.path().join(name);
        image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 4) as u8, 90])
        })
        .save(&path)
        .expect("save picture");
        path
    }
}

/// An engine that stops before step `hold_at` of every job until the test releases it, so
/// that progress and cancel can be seen at a known point whatever the machine's speed.
fn held_engine(hold_at: usize) -> (EngineConfig, Sender<()>) {
    let (release_tx, release_rx) = bounded::<()>(8);
    let hook = Arc::new(move |point: FaultPoint| {
        if let FaultPoint::BeforeStep { step, .. } = point {
            if step == hold_at {
                // A test that never releases fails on its own timeout; don't hang forever.
                release_rx.recv_timeout(Duration::from_secs(30)).ok();
            }
        }
        Fault::Proceed
    });
    let config = EngineConfig {
        device: DeviceChoice::Cpu,
        fault_hook: Some(hook),
        ..Default::default()
    };
    (config, release_tx)
}

/// A window whose engine holds before step `hold_at` (see `held_engine`), after one frame.
/// Bound as `let (folders, harness, release) = ...`, the release channel drops first, so the
/// engine's thread is free before the harness joins it.
fn held_window(hold_at: usize) -> (Folders, Harness<'static, EaselApp>, Sender<()>) {
    let folders = Folders::new();
    let (engine, release) = held_engine(hold_at);
    let mut harness = window(folders.paths(), engine);
    harness.step();
    (folders, harness, release)
}

fn plain_engine() -> EngineConfig {
    EngineConfig {
        device: DeviceChoice::Cpu,
        ..Default::default()
    }
}

fn window(paths: AppPaths, engine: EngineConfig) -> Harness<'static, EaselApp> {
    window_of(EaselApp::new(paths, engine))
}

fn window_of(app: EaselApp) -> Harness<'static, EaselApp> {
    Harness::builder()
        .with_size(Vec2::new(1400.0, 900.0))
        .build_ui_state(|ui, app: &mut EaselApp| app.show(ui), app)
}

/// Runs frames until `done` holds (the engine and loaders work on their own threads).
fn run_until(harness: &mut Harness<'_, EaselApp>, what: &str, done: impl Fn(&EaselApp) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(harness.state()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        harness.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    harness.step();
}

/// A file dropped on the window, as winit hands it over.
#[derive(Debug)]
struct DroppedPath(PathBuf);

impl egui::DroppedFile for DroppedPath {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn drop_file(harness: &mut Harness<'_, EaselApp>, path: PathBuf) {
    harness
        .input_mut()
        .dropped_files
        .push(Arc::new(DroppedPath(path)));
    harness.step();
}

fn click(harness: &mut Harness<'_, EaselApp>, label: &str) {
    harness.get_by_label(label).click();
    harness.step();
    harness.step();
}

#[test]
fn typing_a_prompt_and_generating_shows_progress_a_preview_and_a_saved_result() {
    if parity_missing() {
        return;
    }
    let (folders, mut harness, release) = held_window(3);
    harness.state_mut().prompt.settings.steps = 4;
    harness.state_mut().prompt.settings.width_px = 64;
    harness.state_mut().prompt.settings.height_px = 64;

    let prompt = harness.get_by_role_and_label(Role::MultilineTextInput, "Prompt");
    prompt.focus();
    harness.step();
    harness
        .get_by_role_and_label(Role::MultilineTextInput, "Prompt")
        .type_text("a red boat");
    harness.step();
    assert_eq!(harness.state().prompt.settings.prompt, "a red boat");

    click(&mut harness, "Generate");
    assert!(harness.state().is_busy(), "Generate sent a job");
    run_until(&mut harness, "step 2 of 4", |app| {
        app.status.progress.is_some_and(|p| p.step == 2)
    });
    // The status bar and the preview show where the job is while it is held before step 3.
    let status = harness.get_by_label_contains("it/s");
    assert!(format!("{status:?}").contains("step 2/4"), "{status:?}");
    harness.get_by_label("Preview: step 2/4");
    harness.get_by_label_contains("cpu");

    release.send(()).expect("release");
    run_until(&mut harness, "the result", |app| {
        !app.is_busy() && !app.has_background_work() && app.results.history.len() == 1
    });
    let entry = &harness.state().results.history[0];
    assert_eq!(entry.parameters.prompt, "a red boat");
    assert_eq!(entry.image.dimensions(), (64, 64));
    let saved = entry.saved.clone().expect("saved to the outputs folder");
    assert!(
        saved.starts_with(folders.paths().outputs_dir),
        "{}",
        saved.display()
    );
    let bytes = std::fs::read(&saved).expect("the saved file");
    assert!(
        bytes.windows(10).any(|w| w == b"parameters"),
        "the PNG carries its parameters"
    );
    harness.get_by_label("Result 1");
    assert!(harness.state().status.last_error.is_none());

    // Dropped back in, the saved result brings its parameters with it.
    let seed = entry.parameters.seed;
    {
        let settings = &mut harness.state_mut().prompt.settings;
        settings.prompt = "something else".into();
        settings.seed = seed.wrapping_add(1);
        settings.steps = 9;
    }
    drop_file(&mut harness, saved);
    run_until(&mut harness, "the dropped result", |app| {
        app.references.items.len() == 1
    });
    click(&mut harness, "Recall");
    let settings = &harness.state().prompt.settings;
    assert_eq!(settings.prompt, "a red boat");
    assert_eq!(
        (settings.seed, settings.seed_locked, settings.steps),
        (seed, true, 4)
    );
}

#[test]
fn cancel_during_a_job_stops_it_and_keeps_everything_else() {
    if parity_missing() {
        return;
    }
    let (_folders, mut harness, release) = held_window(2);
    {
        let settings = &mut harness.state_mut().prompt.settings;
        settings.prompt = "a lighthouse".into();
        settings.steps = 6;
        settings.width_px = 64;
        settings.height_px = 64;
    }
    // The buttons, then the keys (Ctrl/Cmd+Enter generates, Esc cancels).
    for by_keys in [false, true] {
        if by_keys {
            harness.key_press_modifiers(Modifiers::COMMAND, Key::Enter);
            harness.step();
        } else {
            click(&mut harness, "Generate");
        }
        assert!(harness.state().is_busy(), "a job was sent");
        run_until(&mut harness, "step 1", |app| {
            app.status.progress.is_some_and(|p| p.step == 1)
        });
        if by_keys {
            harness.key_press(Key::Escape);
            harness.step();
        } else {
            click(&mut harness, "Cancel");
        }
        release.send(()).expect("release");
        run_until(&mut harness, "the cancel", |app| !app.is_busy());
        let app = harness.state();
        assert!(
            app.results.history.is_empty(),
            "a cancelled job leaves no result"
        );
        assert!(
            app.status.last_error.is_none(),
            "{:?}",
            app.status.last_error
        );
        assert!(app.engine_is_running());
        assert_eq!(app.prompt.settings.prompt, "a lighthouse");
    }
}

#[test]
fn a_dead_engine_is_reported_and_restarts_with_the_inputs_kept() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let crashed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let crash_once = Arc::clone(&crashed);
    let engine = EngineConfig {
        device: DeviceChoice::Cpu,
        fault_hook: Some(Arc::new(move |point| {
            if matches!(point, FaultPoint::JobTaken(_))
                && !crash_once.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                panic!("simulated engine crash");
            }
            Fault::Proceed
        })),
        ..Default::default()
    };
    let mut harness = window(folders.paths(), engine);
    harness.step();
    drop_file(&mut harness, folders.picture("kept.png"));
    run_until(&mut harness, "the image", |app| {
        app.references.init().is_some()
    });
    {
        let settings = &mut harness.state_mut().prompt.settings;
        settings.prompt = "still here".into();
        settings.steps = 2;
    }
    harness
        .state_mut()
        .references
        .init_mut()
        .expect("init")
        .mask
        .fill();
    click(&mut harness, "Generate");
    run_until(&mut harness, "the engine's death", |app| {
        !app.engine_is_running()
    });
    harness.get_by_label_contains("The engine stopped");
    assert!(
        !harness.state().is_busy(),
        "the lost job is not shown as running"
    );

    click(&mut harness, "Restart engine");
    assert!(harness.state().engine_is_running());
    let app = harness.state();
    assert_eq!(app.prompt.settings.prompt, "still here");
    assert!(
        !app.references.init().expect("init kept").mask.is_empty(),
        "the mask is kept"
    );
    click(&mut harness, "Generate");
    run_until(&mut harness, "a result after the restart", |app| {
        !app.is_busy() && !app.has_background_work() && app.results.history.len() == 1
    });
}

/// The canvas's screen point over image pixel `px`.
fn screen_of(harness: &Harness<'_, EaselApp>, px: Pos2) -> Pos2 {
    let panel = harness.get_by_label("Mask canvas").rect();
    let app = harness.state();
    let image_px = Vec2::new(64.0, 64.0);
    let rect = app.canvas.view.image_rect(panel, image_px);
    rect.min + px.to_vec2() * app.canvas.view.scale(panel, image_px)
}

/// A primary-button drag from screen point `from` to `to`, in 8 moves.
fn primary_drag(harness: &mut Harness<'_, EaselApp>, from: Pos2, to: Pos2) {
    harness.event(Event::PointerMoved(from));
    harness.step();
    harness.event(Event::PointerButton {
        pos: from,
        button: PointerButton::Primary,
        pressed: true,
        modifiers: Modifiers::NONE,
    });
    harness.step();
    for i in 1..=8 {
        harness.event(Event::PointerMoved(from + (to - from) * (i as f32 / 8.0)));
        harness.step();
    }
    harness.event(Event::PointerButton {
        pos: to,
        button: PointerButton::Primary,
        pressed: false,
        modifiers: Modifiers::NONE,
    });
    harness.step();
    harness.step();
}

fn mask_at(harness: &Harness<'_, EaselApp>, x: u32, y: u32) -> u8 {
    harness
        .state()
        .references
        .init()
        .expect("init image")
        .mask
        .pixels()
        .get_pixel(x, y)
        .0[0]
}

#[test]
fn a_dropped_image_takes_a_stroke_that_undo_redo_and_invert_act_on() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let mut harness = window(folders.paths(), plain_engine());
    harness.step();
    drop_file(&mut harness, folders.picture("street.png"));
    run_until(&mut harness, "the dropped image", |app| {
        app.references.init().is_some()
    });
    harness.get_by_label("Mode: img2img");
    harness.state_mut().canvas.brush.radius_px = 3.0;
    harness.state_mut().canvas.brush.softness = 0.0;
    harness.step();

    // A horizontal stroke along row 32, from x=10 to x=50.
    let from = screen_of(&harness, Pos2::new(10.0, 32.0));
    let to = screen_of(&harness, Pos2::new(50.0, 32.0));
    primary_drag(&mut harness, from, to);
    assert_eq!(mask_at(&harness, 30, 32), 255, "the stroke masked its path");
    assert_eq!(mask_at(&harness, 30, 50), 0, "and nothing far from it");
    harness.get_by_label("Mode: inpaint");
    let stroke = init_mask(&harness);

    click(&mut harness, "Undo");
    assert_eq!(
        mask_at(&harness, 30, 32),
        0,
        "undo removes the whole stroke"
    );
    harness.get_by_label("Mode: img2img");
    click(&mut harness, "Redo");
    assert_eq!(
        harness
            .state()
            .references
            .init()
            .expect("init")
            .mask
            .pixels(),
        &stroke
    );
    click(&mut harness, "Invert");
    assert_eq!(mask_at(&harness, 30, 32), 0);
    assert_eq!(mask_at(&harness, 30, 50), 255);
    // The keyboard undoes too.
    harness.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    harness.step();
    assert_eq!(
        harness
            .state()
            .references
            .init()
            .expect("init")
            .mask
            .pixels(),
        &stroke
    );
}

#[test]
fn a_bad_image_file_gives_a_visible_error_and_changes_nothing() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let mut harness = window(folders.paths(), plain_engine());
    harness.step();
    drop_file(&mut harness, folders.picture("good.png"));
    run_until(&mut harness, "the good image", |app| {
        app.references.items.len() == 1
    });
    harness.state_mut().prompt.settings.prompt = "kept".into();
    let init_before = harness.state().references.init;

    let broken = folders.root.path().join("broken.png");
    std::fs::write(&broken, b"this is not a png").expect("write");
    drop_file(&mut harness, broken);
    run_until(&mut harness, "the failed load", |app| {
        !app.references.is_loading() && app.status.last_error.is_some()
    });
    let error = harness.state().status.last_error.clone().expect("error");
    assert!(
        error.contains("broken.png") && error.contains("not an image"),
        "{error}"
    );
    harness.get_by_label_contains("broken.png");
    let app = harness.state();
    assert_eq!(app.references.items.len(), 1);
    assert_eq!(app.references.init, init_before);
    assert_eq!(app.prompt.settings.prompt, "kept");
    click(&mut harness, "Dismiss");
    assert!(harness.state().status.last_error.is_none());
}

#[test]
fn prompt_init_image_and_mask_survive_a_restart() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let picture = folders.picture("portrait.png");
    {
        let mut harness = window(folders.paths(), plain_engine());
        harness.step();
        drop_file(&mut harness, picture.clone());
        run_until(&mut harness, "the image", |app| {
            app.references.init().is_some()
        });
        harness.state_mut().prompt.settings.prompt = "a cat in a hat".into();
        click(&mut harness, "Fill");
        harness.state_mut().persist(None);
    }
    let mut harness = window(folders.paths(), plain_engine());
    run_until(&mut harness, "the restored image", |app| {
        app.references.init().is_some()
    });
    let app = harness.state();
    assert_eq!(app.prompt.settings.prompt, "a cat in a hat");
    let init = app.references.init().expect("init");
    assert_eq!(init.path.as_deref(), Some(picture.as_path()));
    assert!(
        init.mask.pixels().iter().all(|&v| v == 255),
        "the filled mask came back"
    );
}

#[test]
fn a_results_folder_that_cannot_be_written_is_reported_at_start() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let blocker = folders.root.path().join("not-a-folder");
    std::fs::write(&blocker, b"a file where the outputs folder should be").expect("write");
    let mut paths = folders.paths();
    paths.outputs_dir = blocker.join("outputs");
    let mut harness = window(paths, plain_engine());
    harness.step();
    harness.get_by_label_contains("results cannot be saved");
    harness.get_by_label_contains("not-a-folder/outputs");
}

#[test]
fn a_pasted_image_and_its_mask_survive_a_restart() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let pixels = egui::ColorImage::from_rgb([48, 32], &[120u8; 48 * 32 * 3]);
    {
        let mut harness = window(folders.paths(), plain_engine());
        harness.step();
        harness
            .input_mut()
            .events
            .push(Event::PasteImage(Arc::new(pixels)));
        harness.step();
        assert!(harness.state().references.init().is_some(), "pasted");
        click(&mut harness, "Fill");
        harness.state_mut().persist(None);
        // A pasted image whose file went missing (a failed write) is written again.
        let pasted_dir = folders.paths().data_dir.join("pasted");
        for entry in std::fs::read_dir(&pasted_dir)
            .expect("pasted folder")
            .flatten()
        {
            std::fs::remove_file(entry.path()).expect("remove");
        }
        harness.state_mut().persist(None);
    }
    let kept = folders.paths().data_dir.join("pasted");
    assert_eq!(
        std::fs::read_dir(&kept).map(Iterator::count).unwrap_or(0),
        1
    );
    let mut harness = window(folders.paths(), plain_engine());
    run_until(&mut harness, "the restored pasted image", |app| {
        app.references.init().is_some()
    });
    let init = harness.state().references.init().expect("init");
    assert_eq!(init.image.dimensions(), (48, 32));
    assert!(init.image.as_raw().iter().all(|&v| v == 120));
    assert!(init.path.as_deref().is_some_and(|p| p.starts_with(&kept)));
    assert!(
        init.mask.pixels().iter().all(|&v| v == 255),
        "the mask painted on the pasted image came back"
    );
}

#[test]
fn settings_problems_show_in_the_status_bar_and_defaults_seed_a_fresh_session() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let file = folders.root.path().join("easel.toml");
    std::fs::write(
        &file,
        "dtype = \"f8\"\nsteps = 33\ndefault_model = \"sd15-tiny\"\n",
    )
    .expect("write settings");
    let resolved = easel_engine::settings::resolve(&file, &|_| None, &[]);
    let mut app = EaselApp::new(folders.paths(), plain_engine());
    app.apply_settings(&resolved, true);
    let mut harness = window_of(app);
    harness.step();
    harness.get_by_label_contains("Settings: dtype = \"f8\" is not valid");
    let settings = &harness.state().prompt.settings;
    assert_eq!(settings.steps, 33);
    assert!(settings
        .model
        .as_ref()
        .is_some_and(|m| m.ends_with("sd15-tiny")));
}

/// Replaces the text of the field labelled `label` and presses Enter.
fn enter_text(harness: &mut Harness<'_, EaselApp>, label: &str, text: &str) {
    harness.get_by_label(label).focus();
    harness.step();
    harness.key_press_modifiers(Modifiers::COMMAND, Key::A);
    harness.step();
    harness.get_by_label(label).type_text(text);
    harness.step();
    harness.key_press(Key::Enter);
    harness.step();
    harness.step();
}

#[test]
fn an_odd_width_typed_for_a_flux_model_becomes_a_multiple_of_16() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let flux = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parity/models/flux-tiny-dev");
    std::os::unix::fs::symlink(
        flux.canonicalize().expect("canonical"),
        folders.paths().models_dir.join("flux-tiny-dev"),
    )
    .expect("link the FLUX model");
    let mut harness = window(folders.paths(), plain_engine());
    harness.step();
    harness.state_mut().prompt.settings.model = None;
    click(&mut harness, "Model");
    click(&mut harness, "flux-tiny-dev");
    enter_text(&mut harness, "Width", "1000");
    enter_text(&mut harness, "Height", "777");
    let settings = &harness.state().prompt.settings;
    assert_eq!((settings.width_px, settings.height_px), (992, 768));

    // A Stable Diffusion model takes multiples of 8.
    click(&mut harness, "Model");
    click(&mut harness, "sd15-tiny");
    enter_text(&mut harness, "Width", "1000");
    assert_eq!(harness.state().prompt.settings.width_px, 1000);
}

#[test]
fn a_setting_changed_in_the_window_is_saved_at_once_and_a_bad_one_is_refused() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let file = folders.root.path().join("config/easel.toml");
    let resolve_file = file.clone();
    let app = EaselApp::new(folders.paths(), plain_engine()).with_settings(
        Box::new(move || easel_engine::settings::resolve(&resolve_file, &|_| None, &[])),
        true,
    );
    let mut harness = window_of(app);
    harness.step();
    click(&mut harness, "Settings");
    let outputs = folders.root.path().join("art");
    enter_text(&mut harness, "outputs_dir", &outputs.display().to_string());
    let written = std::fs::read_to_string(&file).expect("the settings file was written");
    assert!(
        written.contains("outputs_dir") && written.contains("art"),
        "{written}"
    );

    enter_text(&mut harness, "dtype", "f8");
    let error = harness.state().status.last_error.clone().expect("refused");
    assert!(error.contains("dtype") && error.contains("f8"), "{error}");
    let unchanged = std::fs::read_to_string(&file).expect("file");
    assert!(!unchanged.contains("dtype"), "{unchanged}");
    assert!(harness.state().engine_is_running());
}

#[test]
fn edit_references_go_to_klein_in_panel_order_and_survive_a_restart() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let klein = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/parity/flux2/models/flux2-klein-tiny");
    std::os::unix::fs::symlink(
        klein.canonicalize().expect("canonical"),
        folders.paths().models_dir.join("flux2-klein-tiny"),
    )
    .expect("link the FLUX.2 model");
    let cat = folders.picture("cat.png");
    let garden = folders.picture("garden.png");
    {
        let mut harness = window(folders.paths(), plain_engine());
        harness.step();
        harness.state_mut().prompt.settings.model = None;
        click(&mut harness, "Model");
        click(&mut harness, "flux2-klein-tiny");
        // Distilled klein: its 4 steps, no negative prompt, its own sampler.
        assert_eq!(harness.state().prompt.settings.steps, 4);
        harness.get_by_label("flow-match Euler");
        drop_file(&mut harness, garden.clone());
        drop_file(&mut harness, cat.clone());
        run_until(&mut harness, "both pictures", |app| {
            app.references.items.len() == 2
        });
        click(&mut harness, "No init image (txt2img)");
        for item in &mut harness.state_mut().references.items {
            item.edit = true;
        }
        // The cat first: "Move cat.png earlier".
        click(&mut harness, "Move cat.png earlier");
        harness.get_by_label("Mode: edit");
        {
            let settings = &mut harness.state_mut().prompt.settings;
            settings.prompt = "the cat in the garden".into();
            settings.steps = 2;
            (settings.width_px, settings.height_px) = (64, 64);
        }
        click(&mut harness, "Generate");
        run_until(&mut harness, "the edit", |app| {
            !app.is_busy() && !app.has_background_work() && !app.results.history.is_empty()
        });
        let entry = &harness.state().results.history[0];
        assert_eq!(entry.parameters.references, ["cat.png", "garden.png"]);
        harness.state_mut().persist(None);
    }
    let mut harness = window(folders.paths(), plain_engine());
    run_until(&mut harness, "the restored references", |app| {
        app.references.items.len() == 2
    });
    let items = &harness.state().references.items;
    assert_eq!(items[0].name, "cat.png");
    assert_eq!(items[1].name, "garden.png");
    assert!(items.iter().all(|r| r.edit));
    assert!(harness.state().references.init.is_none());
}

#[test]
fn picking_a_flux_model_takes_its_defaults_and_generates() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let flux = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parity/models/flux-tiny-dev");
    std::os::unix::fs::symlink(
        flux.canonicalize().expect("canonical"),
        folders.paths().models_dir.join("flux-tiny-dev"),
    )
    .expect("link the FLUX model");
    let mut harness = window(folders.paths(), plain_engine());
    harness.step();
    harness.state_mut().prompt.settings.prompt = "a paper boat".into();
    harness.state_mut().prompt.settings.negative_prompt = "blurry".into();

    // Picked from the list (a fresh session may already have taken it as the first model).
    harness.state_mut().prompt.settings.model = None;
    click(&mut harness, "Model");
    click(&mut harness, "flux-tiny-dev");
    let settings = &harness.state().prompt.settings;
    assert!(settings
        .model
        .as_ref()
        .is_some_and(|m| m.ends_with("flux-tiny-dev")));
    assert_eq!((settings.steps, settings.guidance), (28, 3.5));
    // FLUX has no negative prompt: the field rests, its text kept for SD models.
    let negative = harness.get_by_role_and_label(Role::MultilineTextInput, "Negative prompt");
    assert!(
        negative.accesskit_node().is_disabled(),
        "the negative prompt is disabled"
    );
    harness.get_by_label("flow-match Euler");

    {
        let settings = &mut harness.state_mut().prompt.settings;
        settings.steps = 2;
        (settings.width_px, settings.height_px) = (64, 64);
    }
    click(&mut harness, "Generate");
    run_until(&mut harness, "the FLUX result", |app| {
        !app.is_busy() && !app.has_background_work() && !app.results.history.is_empty()
    });
    let entry = &harness.state().results.history[0];
    assert_eq!(entry.image.dimensions(), (64, 64));
    assert_eq!(entry.parameters.negative_prompt, None);
    assert_eq!(harness.state().prompt.settings.negative_prompt, "blurry");
    assert!(harness.state().status.last_error.is_none());
}

#[path = "../../tests/it/common/fake_hub.rs"]
mod fake_hub;

#[test]
fn the_models_window_shows_the_fit_downloads_and_offers_the_model() {
    if parity_missing() {
        return;
    }
    let hub = fake_hub::FakeHub::start();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parity/models/sd15-tiny");
    hub.serve_folder(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        &tiny,
        &["tokenizer/tokenizer.json"],
        false,
    );
    let tokenizer = std::fs::read(tiny.join("tokenizer/tokenizer.json")).expect("tokenizer");
    hub.serve_file("openai/clip-vit-base-patch32", "tokenizer.json", tokenizer);
    let folders = Folders::new();
    let app = EaselApp::new(folders.paths(), plain_engine()).with_hub_endpoint(hub.url());
    let mut harness = window_of(app);
    harness.step();
    // The picked model's estimate is shown before it loads.
    harness.get_by_label_contains("low-memory): ");
    harness.get_by_label("Models").click();
    for _ in 0..3 {
        harness.step();
    }
    // Sizes and the verdict are there before anything is fetched.
    let sd15_sizes = harness
        .get_all_by_label_contains("Download 4.3 GB · needs")
        .count();
    assert_eq!(sd15_sizes, 2, "SD 1.5 and its inpainting model");
    harness
        .get_by_label("Download Stable Diffusion 1.5")
        .click();
    run_until(&mut harness, "the download", |app| {
        app.models_panel.located("sd15").is_some()
    });
    let folder = folders.paths().models_dir.join("catalog/sd15");
    assert!(harness.state().models.iter().any(|m| m.dir == folder));
    harness.step();
    harness.get_by_label("Use Stable Diffusion 1.5").click();
    harness.step();
    assert_eq!(harness.state().prompt.settings.model, Some(folder));
}

/// A window on the tiny model with `street.png` (64x64) dropped in as the init image.
fn window_with_picture(folders: &Folders) -> Harness<'static, EaselApp> {
    let mut harness = window(folders.paths(), plain_engine());
    harness.step();
    drop_file(&mut harness, folders.picture("street.png"));
    run_until(&mut harness, "the dropped image", |app| {
        app.references.init().is_some()
    });
    harness
}

/// The init image's pixels.
fn init_image(harness: &Harness<'_, EaselApp>) -> Arc<image::RgbImage> {
    harness
        .state()
        .references
        .init()
        .expect("init")
        .image
        .clone()
}

/// The init image's mask pixels.
fn init_mask(harness: &Harness<'_, EaselApp>) -> image::GrayImage {
    harness
        .state()
        .references
        .init()
        .expect("init")
        .mask
        .pixels()
        .clone()
}

/// A hard brush stroke of `radius_px` on the init image's mask, from `from` to `to`.
fn paint_stroke(
    harness: &mut Harness<'_, EaselApp>,
    from: (f32, f32),
    to: (f32, f32),
    radius_px: f32,
) {
    use super::canvas::mask::{BrushTip, Tool};
    let tip = BrushTip {
        tool: Tool::Brush,
        radius_px,
        softness: 0.0,
    };
    let mask = &mut harness
        .state_mut()
        .references
        .init_mut()
        .expect("init")
        .mask;
    mask.begin_stroke(tip, from);
    mask.extend_stroke(tip, to);
    mask.end_stroke();
    harness.step();
}

/// Generates 2 steps of `prompt` and waits for the job's end (its result, or its error).
fn generate_and_wait(harness: &mut Harness<'_, EaselApp>, prompt: &str) {
    harness.state_mut().prompt.settings.steps = 2;
    harness.state_mut().prompt.settings.prompt = prompt.into();
    harness.step();
    click(harness, "Generate");
    run_until(harness, "the job's end", |app| {
        !app.is_busy() && !app.has_background_work()
    });
    assert!(
        !harness.state().results.history.is_empty(),
        "{:?}",
        harness.state().status.last_error
    );
}

#[test]
fn a_large_pictures_mask_shows_its_masked_area_and_is_painted_there() {
    use easel_engine::pipeline::request::InpaintArea;
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let mut harness = window(folders.paths(), plain_engine());
    harness.step();
    assert!(
        harness.state().prompt.settings.model.is_some(),
        "the only model is picked"
    );
    // 192x160: larger than the tiny model's native 64x64, so Auto paints the masked area.
    let picture = image::RgbImage::from_fn(192, 160, |x, y| {
        image::Rgb([(x + y) as u8, (2 * x) as u8, 200 - (y / 2) as u8])
    });
    harness
        .state_mut()
        .references
        .add(picture.clone(), None, true);
    harness.step();
    paint_stroke(&mut harness, (120.0, 60.0), (140.0, 70.0), 6.0);
    harness.state_mut().canvas.brush.mask_padding_px = 16;
    harness.step();
    harness.step();
    // The stroke covers 114..146 x 54..76; with 16 px of context: 98..162 x 38..92.
    harness.get_by_label_contains("Masked area: 64x54 px at 98,38");
    harness.state_mut().canvas.brush.inpaint_area = InpaintArea::Whole;
    harness.step();
    assert!(
        harness.query_by_label_contains("Masked area:").is_none(),
        "the whole image shows no box"
    );
    harness.state_mut().canvas.brush.inpaint_area = InpaintArea::Auto;
    generate_and_wait(&mut harness, "a red boat");
    let entry = &harness.state().results.history[0];
    assert_eq!(entry.image.dimensions(), (192, 160));
    assert_eq!(entry.parameters.masked_area_padding_px, Some(16));
    let mask = init_mask(&harness);
    for (x, y, pixel) in picture.enumerate_pixels() {
        if mask.get_pixel(x, y)[0] == 0 {
            assert_eq!(entry.image.get_pixel(x, y), pixel, "unmasked pixel {x},{y}");
        }
    }
}

#[test]
fn a_result_goes_to_the_canvas_with_its_mask_and_steps_back_and_forth() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let mut harness = window_with_picture(&folders);
    let original = init_image(&harness);
    paint_stroke(&mut harness, (20.0, 20.0), (40.0, 30.0), 5.0);
    let mask = init_mask(&harness);
    generate_and_wait(&mut harness, "a red boat");
    let result = harness.state().results.history[0].image.clone();
    assert_ne!(*result, *original, "the inpaint changed something");

    click(&mut harness, "To canvas");
    let init = harness.state().references.init().expect("init");
    assert_eq!(*init.image, *result, "the result is the canvas image");
    assert_eq!(
        init.mask.pixels(),
        &mask,
        "the mask stays for the next repaint"
    );
    assert_eq!(
        harness.state().references.items.len(),
        1,
        "no new reference"
    );
    harness.get_by_label("Version 2 of 2");
    click(&mut harness, "Compare with previous");
    assert!(
        harness.state().canvas.is_comparing(),
        "the previous version is shown"
    );
    click(&mut harness, "Compare with previous");
    assert!(!harness.state().canvas.is_comparing());

    click(&mut harness, "Previous version");
    let init = harness.state().references.init().expect("init");
    assert_eq!(*init.image, *original);
    assert_eq!(init.mask.pixels(), &mask);
    harness.get_by_label("Version 1 of 2");
    click(&mut harness, "Next version");
    assert_eq!(
        *harness.state().references.init().expect("init").image,
        *result
    );

    // After a restart: the result with its mask, and the picture before it one step back.
    harness.state_mut().persist(None);
    drop(harness);
    let mut harness = window(folders.paths(), plain_engine());
    run_until(&mut harness, "the restored canvas", |app| {
        app.references.init().is_some()
    });
    let init = harness.state().references.init().expect("init");
    assert_eq!(*init.image, *result);
    assert_eq!(init.mask.pixels(), &mask);
    harness.step();
    click(&mut harness, "Previous version");
    assert_eq!(
        *harness.state().references.init().expect("init").image,
        *original
    );
}

#[test]
fn extending_the_canvas_masks_the_new_area_and_generating_keeps_the_picture() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let mut harness = window_with_picture(&folders);
    let original = init_image(&harness);
    harness.state_mut().canvas.extend_px = [16, 0, 32, 8];
    harness.step();
    click(&mut harness, "Extend canvas");
    run_until(&mut harness, "the extended canvas", |app| {
        app.references
            .init()
            .is_some_and(|r| r.image.dimensions() == (112, 72))
    });
    let init = harness.state().references.init().expect("init");
    assert_eq!(init.image.dimensions(), (112, 72));
    for (x, y, pixel) in original.enumerate_pixels() {
        assert_eq!(init.image.get_pixel(x + 16, y), pixel);
        assert_eq!(init.mask.pixels().get_pixel(x + 16, y)[0], 0);
    }
    assert_eq!(init.mask.pixels().get_pixel(0, 0)[0], 255);
    assert_eq!(init.mask.pixels().get_pixel(111, 71)[0], 255);
    harness.get_by_label("Mode: inpaint");
    harness.get_by_label("Version 2 of 2");

    generate_and_wait(&mut harness, "a wider street");
    let entry = harness.state().results.history.first().expect("a result");
    assert_eq!(entry.image.dimensions(), (112, 72));
    for (x, y, pixel) in original.enumerate_pixels() {
        assert_eq!(
            entry.image.get_pixel(x + 16, y),
            pixel,
            "original pixel {x},{y}"
        );
    }
    click(&mut harness, "Previous version");
    assert_eq!(
        harness
            .state()
            .references
            .init()
            .expect("init")
            .image
            .dimensions(),
        (64, 64)
    );
}

#[test]
fn dragging_the_frame_sets_the_extension_and_each_size_keeps_its_own_mask() {
    if parity_missing() {
        return;
    }
    let folders = Folders::new();
    let mut harness = window_with_picture(&folders);
    let original = init_image(&harness);
    paint_stroke(&mut harness, (10.0, 10.0), (20.0, 10.0), 3.0);
    let painted = init_mask(&harness);
    // Zoomed out so that the frame has room to grow inside the panel.
    harness.state_mut().canvas.view.zoom = 0.5;
    click(&mut harness, "Frame");
    assert!(harness.state().canvas.framing);

    // The right edge dragged 16 px out, then the top-left corner 8 px left and 24 px up.
    let from = screen_of(&harness, Pos2::new(60.0, 32.0));
    let to = screen_of(&harness, Pos2::new(76.0, 32.0));
    primary_drag(&mut harness, from, to);
    assert_eq!(harness.state().canvas.extend_px, [0, 0, 16, 0]);
    let from = screen_of(&harness, Pos2::new(2.0, 2.0));
    let to = screen_of(&harness, Pos2::new(-8.0, -24.0));
    primary_drag(&mut harness, from, to);
    assert_eq!(harness.state().canvas.extend_px, [8, 24, 16, 0]);
    harness.get_by_label("New size: 88x88 px");
    assert_eq!(
        harness
            .state()
            .references
            .init()
            .expect("init")
            .mask
            .pixels(),
        &painted,
        "framing paints nothing"
    );

    click(&mut harness, "Extend canvas");
    run_until(&mut harness, "the extended canvas", |app| {
        app.references
            .init()
            .is_some_and(|r| r.image.dimensions() == (88, 88))
    });
    let init = harness.state().references.init().expect("init");
    for (x, y, pixel) in original.enumerate_pixels() {
        assert_eq!(init.image.get_pixel(x + 8, y + 24), pixel);
    }
    let extended = init.mask.pixels().clone();
    assert_eq!(extended.get_pixel(0, 0)[0], 255, "the new area is masked");

    // Back to the smaller picture: its own stroke, not an empty mask; forward again: the
    // extension's mask.
    click(&mut harness, "Previous version");
    let init = harness.state().references.init().expect("init");
    assert_eq!(init.image.dimensions(), (64, 64));
    assert_eq!(init.mask.pixels(), &painted);
    click(&mut harness, "Next version");
    let init = harness.state().references.init().expect("init");
    assert_eq!(init.image.dimensions(), (88, 88));
    assert_eq!(init.mask.pixels(), &extended);
}
