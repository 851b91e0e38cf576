//! Settings: flag > env > file > default, and every bad input answered by a fallback and a
//! problem that names the key, the value and where it came from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use easel_engine::device::DeviceChoice;
use easel_engine::settings::{
    resolve, write_key, DtypeChoice, Residency, Resolved, Settings, Source,
};

fn resolve_with(file: &Path, env: &[(&str, &str)], flags: &[(&str, &str)]) -> Resolved {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let flags: Vec<(String, String)> = flags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    resolve(file, &|name| env.get(name).cloned(), &flags)
}

fn settings_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("easel.toml");
    std::fs::write(&path, text).expect("write settings");
    (dir, path)
}

#[test]
fn flags_beat_env_beat_file_beat_defaults() {
    let (_dir, file) = settings_file(
        "steps = 30\nsampler = \"ddim\"\nidle_minutes = 3\nmodels_dir = \"/file/models\"\n",
    );
    let resolved = resolve_with(
        &file,
        &[("EASEL_STEPS", "40"), ("EASEL_SAMPLER", "euler_a")],
        &[("steps", "50")],
    );
    assert!(resolved.problems.is_empty(), "{:?}", resolved.problems);
    let s = &resolved.settings;
    assert_eq!(s.steps, 50);
    assert_eq!(resolved.source_of("steps"), Some(&Source::Flag));
    assert_eq!(s.sampler.name(), "euler_a");
    assert_eq!(
        resolved.source_of("sampler"),
        Some(&Source::Env("EASEL_SAMPLER".into()))
    );
    assert_eq!(s.idle_minutes, 3);
    assert_eq!(s.models_dir, PathBuf::from("/file/models"));
    assert_eq!(
        resolved.source_of("idle_minutes"),
        Some(&Source::File(file.clone()))
    );
    assert_eq!(s.guidance, Settings::default().guidance);
    assert_eq!(resolved.source_of("guidance"), Some(&Source::Default));
    // The shared machine's default: nothing kept loaded for long.
    assert_eq!(Settings::default().residency, Residency::UnloadWhenIdle);
}

#[test]
fn bad_values_fall_back_and_say_which_key_value_and_file() {
    let (_dir, file) = settings_file(
        "device = \"gpu9\"\ndtype = \"f8\"\nidle_minutes = -5\ncolour = \"blue\"\nsteps = 12\n",
    );
    let resolved = resolve_with(&file, &[], &[]);
    let s = &resolved.settings;
    assert_eq!(s.device, DeviceChoice::Auto);
    assert_eq!(s.dtype, DtypeChoice::Auto);
    assert_eq!(s.idle_minutes, 10);
    assert_eq!(s.steps, 12, "the good keys of the same file still apply");
    let messages: Vec<String> = resolved.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(messages.len(), 4, "{messages:#?}");
    let file_name = file.display().to_string();
    for (key, value) in [("device", "gpu9"), ("dtype", "f8"), ("idle_minutes", "-5")] {
        assert!(
            messages.iter().any(|m| m.contains(key)
                && m.contains(value)
                && m.contains(&file_name)
                && m.contains("instead")),
            "no problem names {key} = {value} in {file_name}: {messages:#?}"
        );
    }
    assert!(messages
        .iter()
        .any(|m| m.contains("unknown key \"colour\"")));
}

#[test]
fn a_bad_env_value_falls_back_to_the_file_and_a_malformed_file_to_defaults() {
    let (_dir, file) = settings_file("dtype = \"f16\"\n");
    let resolved = resolve_with(&file, &[("EASEL_DTYPE", "f8")], &[]);
    assert_eq!(resolved.settings.dtype, DtypeChoice::F16);
    assert!(resolved.problems[0].to_string().contains("EASEL_DTYPE"));

    let (_dir, broken) = settings_file("steps = = 3\n[[[");
    let resolved = resolve_with(&broken, &[], &[]);
    assert_eq!(resolved.settings, Settings::default());
    assert_eq!(resolved.problems.len(), 1);
    let message = resolved.problems[0].to_string();
    assert!(
        message.contains("not valid TOML") && message.contains("easel.toml"),
        "{message}"
    );

    let missing = resolve_with(Path::new("/no/such/easel.toml"), &[], &[]);
    assert!(missing.problems.is_empty());
}

#[test]
fn a_key_written_by_the_window_reads_back_and_keeps_the_others() {
    let (_dir, file) = settings_file("steps = 30\n");
    write_key(&file, "outputs_dir", "/art/outputs").expect("write");
    write_key(&file, "guidance", "4.5").expect("write");
    let resolved = resolve_with(&file, &[], &[]);
    assert!(resolved.problems.is_empty(), "{:?}", resolved.problems);
    assert_eq!(resolved.settings.steps, 30);
    assert_eq!(resolved.settings.guidance, 4.5);
    assert_eq!(resolved.settings.outputs_dir, PathBuf::from("/art/outputs"));
    let error = write_key(&file, "dtype", "f8").expect_err("refused");
    assert!(error.contains("dtype") && error.contains("f8"), "{error}");
    assert_eq!(
        resolve_with(&file, &[], &[]).settings.dtype,
        DtypeChoice::Auto
    );
}

#[test]
fn writing_a_key_keeps_the_users_comments_and_order() {
    let text = "# my art machine\nsteps = 30 # more is slower\n\n# where results go\noutputs_dir = \"/old\"\nguidance = 7.0\n";
    let (_dir, file) = settings_file(text);
    write_key(&file, "outputs_dir", "/art/outputs").expect("write");
    write_key(&file, "sampler", "euler").expect("write");
    let written = std::fs::read_to_string(&file).expect("read back");
    assert_eq!(
        written,
        "# my art machine\nsteps = 30 # more is slower\n\n# where results go\noutputs_dir = \"/art/outputs\"\nguidance = 7.0\nsampler = \"euler\"\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(file.parent().expect("folder"))
        .expect("list")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn residency_settings_become_the_engines_policy() {
    use easel_engine::engine::ResidencyPolicy;
    let (_dir, file) = settings_file("residency = \"memory_budget\"\nmemory_budget_gb = 6\n");
    let resolved = resolve_with(&file, &[], &[]);
    assert!(resolved.problems.is_empty(), "{:?}", resolved.problems);
    assert_eq!(
        resolved.settings.residency_policy(),
        ResidencyPolicy::MemoryBudget(6_000_000_000)
    );
    let resolved = resolve_with(
        &file,
        &[],
        &[("residency", "unload_when_idle"), ("idle_minutes", "3")],
    );
    assert_eq!(
        resolved.settings.residency_policy(),
        ResidencyPolicy::UnloadWhenIdle(std::time::Duration::from_secs(180))
    );
}
