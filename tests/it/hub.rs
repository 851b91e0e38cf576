//! Downloads against a fake hub on 127.0.0.1 serving the tiny parity models under the
//! catalog's real repository names: the cache layout, progress, resume after a cut,
//! damaged files replaced, gated repositories and tokens, offline use, and the user's own
//! hub cache reused. No test touches the internet.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::fake_hub::FakeHub;
use crate::common::jobs;
use easel_engine::engine::{DownloadRequest, Event};
use easel_engine::hub::catalog;
use easel_engine::hub::download::sha256_of;
use easel_engine::hub::{
    self, CacheRoots, DownloadProgress, Downloaded, HubClient, HubError, ModelRef,
};
use easel_engine::pipeline::request::GenerateRequest;

const SD15_REPO: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";
const SD15_TOKENIZER_REPO: &str = "openai/clip-vit-base-patch32";
const UNET: &str = "unet/diffusion_pytorch_model.safetensors";
const VAE: &str = "vae/diffusion_pytorch_model.safetensors";
const TEXT_ENCODER: &str = "text_encoder/model.safetensors";
const GATED_REPO: &str = "easel-test/gated-sd";
const TOKEN: &str = "hf_testsecret_4242";

/// Serves the tiny SD 1.5 as the catalog's SD 1.5 repository, without the tokenizer.json the
/// real repository lacks, and that tokenizer from the repository candle borrows it from.
fn serve_sd15(hub: &FakeHub) {
    let tiny = common::model("sd15-tiny");
    hub.serve_folder(SD15_REPO, &tiny, &["tokenizer/tokenizer.json"], false);
    let tokenizer = std::fs::read(tiny.join("tokenizer/tokenizer.json")).expect("tokenizer");
    hub.serve_file(SD15_TOKENIZER_REPO, "tokenizer.json", tokenizer);
}

fn sd15() -> ModelRef<'static> {
    ModelRef::Catalog(catalog::find("sd15").expect("sd15 in the catalog"))
}

fn client(hub: &FakeHub) -> HubClient {
    HubClient::new(Some(hub.url()), None).expect("a hub client")
}

fn download_sd15(
    hub: &FakeHub,
    roots: &CacheRoots,
    cancel: &AtomicBool,
    progress: &mut Vec<DownloadProgress>,
) -> Result<Downloaded, HubError> {
    hub::download(sd15(), &client(hub), roots, false, cancel, &mut |p| {
        progress.push(p.clone())
    })
}

fn repo_folder(root: &Path, repo: &str) -> PathBuf {
    root.join(format!("models--{}", repo.replace('/', "--")))
}

fn blob(root: &Path, hub: &FakeHub, repo: &str, path: &str) -> PathBuf {
    repo_folder(root, repo)
        .join("blobs")
        .join(hub.sha256(repo, path))
}

/// Generates a 64x64 image from `folder` with the engine, two steps.
fn generates(folder: &Path) {
    let engine = jobs::engine();
    let mut request = GenerateRequest::new(folder, "a red fox");
    request.steps = 2;
    request.width = Some(64);
    request.height = Some(64);
    let job = engine.generate(request).expect("engine running");
    let output = jobs::finished(jobs::wait_for(&engine, job));
    assert_eq!(output.image.dimensions(), (64, 64));
}

/// Asserts that SD 1.5's `path` sits in the cache as the hub serves it.
fn assert_intact(root: &Path, hub: &FakeHub, path: &str) {
    let blob_path = blob(root, hub, SD15_REPO, path);
    let sha256 = sha256_of(&blob_path).expect("readable");
    assert_eq!(sha256, hub.sha256(SD15_REPO, path), "{path}");
}

/// Where SD 1.5's `path` grows while it downloads.
fn partial(root: &Path, hub: &FakeHub, path: &str) -> PathBuf {
    let name = format!("{}.incomplete", hub.sha256(SD15_REPO, path));
    repo_folder(root, SD15_REPO).join("blobs").join(name)
}

fn gets_of(hub: &FakeHub, path: &str) -> Vec<String> {
    hub.requests()
        .into_iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/resolve/") && r.contains(path))
        .collect()
}

#[test]
fn a_download_lands_in_the_cache_layout_reports_progress_and_generates() {
    if common::parity_missing() {
        return;
    }
    let hub = FakeHub::start();
    serve_sd15(&hub);
    let models = tempfile::tempdir().expect("temp dir");
    let roots = CacheRoots::only(models.path());
    let mut progress = Vec::new();
    let outcome = download_sd15(&hub, &roots, &AtomicBool::new(false), &mut progress)
        .expect("the download succeeds");
    let Downloaded::Fetched(located) = outcome else {
        panic!("expected a fetch, got {outcome:?}");
    };

    // The hub's layout: refs/main names the commit, snapshot files link to sha256 blobs.
    let folder = repo_folder(models.path(), SD15_REPO);
    let commit = hub.commit(SD15_REPO);
    let recorded = std::fs::read_to_string(folder.join("refs/main")).expect("refs/main");
    assert_eq!(recorded.trim(), commit);
    let snapshot_unet = folder.join("snapshots").join(&commit).join(UNET);
    let link = std::fs::read_link(&snapshot_unet).expect("a link into blobs");
    let expected_target = Path::new("../../../blobs").join(hub.sha256(SD15_REPO, UNET));
    assert_eq!(link, expected_target);
    assert_intact(models.path(), &hub, UNET);
    let leftovers: Vec<_> = std::fs::read_dir(folder.join("blobs"))
        .expect("blobs")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty(), "no partial files left");
    // The borrowed tokenizer sits in its own repository's folder, linked into the model.
    let tokenizer = located.folder.join("tokenizer/tokenizer.json");
    assert!(tokenizer.is_file(), "{}", tokenizer.display());
    assert!(std::fs::canonicalize(&tokenizer)
        .expect("resolves")
        .starts_with(
            std::fs::canonicalize(repo_folder(models.path(), SD15_TOKENIZER_REPO)).expect("exists")
        ));

    // Progress: never backwards, ending at the total of every file.
    let served_total: u64 = catalog::find("sd15")
        .expect("entry")
        .repo_paths(false)
        .iter()
        .map(|p| hub.size(SD15_REPO, p))
        .sum::<u64>()
        + hub.size(SD15_TOKENIZER_REPO, "tokenizer.json");
    assert!(progress.len() > 2);
    for pair in progress.windows(2) {
        assert!(pair[1].bytes_done >= pair[0].bytes_done, "{pair:?}");
        assert!(pair[1].files_done >= pair[0].files_done, "{pair:?}");
    }
    let last = progress.last().expect("progress");
    assert_eq!(last.bytes_total, served_total);
    assert_eq!(last.bytes_done, served_total);
    assert_eq!(last.files_done, last.files_total);

    // Found again without the network, and it generates.
    assert_eq!(
        hub::model_folder("sd15", &roots).expect("located"),
        located.folder
    );
    generates(&located.folder);
}

#[test]
fn a_cut_connection_resumes_from_the_bytes_on_disk() {
    if common::parity_missing() {
        return;
    }
    let hub = FakeHub::start();
    serve_sd15(&hub);
    let models = tempfile::tempdir().expect("temp dir");
    let roots = CacheRoots::only(models.path());
    hub.cut_next_get(SD15_REPO, UNET, 100_000);
    download_sd15(&hub, &roots, &AtomicBool::new(false), &mut Vec::new())
        .expect("the download recovers from the cut");
    let gets = gets_of(&hub, UNET);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(
        gets[1].contains("bytes=100000-"),
        "resumed with a range: {gets:?}"
    );
    assert_intact(models.path(), &hub, UNET);
}

#[test]
fn a_cancelled_download_keeps_its_bytes_and_the_next_one_resumes() {
    if common::parity_missing() {
        return;
    }
    let hub = FakeHub::start();
    serve_sd15(&hub);
    let models = tempfile::tempdir().expect("temp dir");
    let roots = CacheRoots::only(models.path());
    let cancel = AtomicBool::new(false);
    let result = hub::download(sd15(), &client(&hub), &roots, false, &cancel, &mut |p| {
        if p.file.ends_with(UNET) && p.bytes_done > 0 {
            cancel.store(true, Ordering::Relaxed);
        }
    });
    assert!(matches!(result, Err(HubError::Cancelled)), "{result:?}");
    let partial = partial(models.path(), &hub, UNET);
    let kept = std::fs::metadata(&partial)
        .expect("the partial file is kept")
        .len();
    assert!(kept > 0 && kept < hub.size(SD15_REPO, UNET), "{kept}");

    download_sd15(&hub, &roots, &AtomicBool::new(false), &mut Vec::new()).expect("resumes");
    let gets = gets_of(&hub, UNET);
    assert!(
        gets.last()
            .is_some_and(|g| g.contains(&format!("bytes={kept}-"))),
        "{gets:?}"
    );
    assert_intact(models.path(), &hub, UNET);
}

#[test]
fn damaged_files_are_replaced_and_intact_ones_kept() {
    if common::parity_missing() {
        return;
    }
    let hub = FakeHub::start();
    serve_sd15(&hub);
    let models = tempfile::tempdir().expect("temp dir");
    let roots = CacheRoots::only(models.path());
    download_sd15(&hub, &roots, &AtomicBool::new(false), &mut Vec::new()).expect("first");
    // Same size, wrong content; and a truncated file.
    let unet = blob(models.path(), &hub, SD15_REPO, UNET);
    let size = std::fs::metadata(&unet).expect("unet").len();
    std::fs::write(&unet, vec![0u8; size as usize]).expect("damage the UNet");
    let vae = blob(models.path(), &hub, SD15_REPO, VAE);
    let bytes = std::fs::read(&vae).expect("vae");
    std::fs::write(&vae, &bytes[..bytes.len() / 2]).expect("truncate the VAE");

    download_sd15(&hub, &roots, &AtomicBool::new(false), &mut Vec::new()).expect("second");
    for path in [UNET, VAE] {
        assert_intact(models.path(), &hub, path);
        assert_eq!(gets_of(&hub, path).len(), 2, "{path} fetched again");
    }
    assert_eq!(
        gets_of(&hub, TEXT_ENCODER).len(),
        1,
        "intact files are not fetched again"
    );
}

#[test]
fn a_model_in_the_users_hub_cache_is_used_where_it_is() {
    if common::parity_missing() {
        return;
    }
    let hub = FakeHub::start();
    serve_sd15(&hub);
    let user_cache = tempfile::tempdir().expect("temp dir");
    download_sd15(
        &hub,
        &CacheRoots::only(user_cache.path()),
        &AtomicBool::new(false),
        &mut Vec::new(),
    )
    .expect("fills the user's cache");
    let requests_before = hub.requests().len();

    let models = tempfile::tempdir().expect("temp dir");
    let roots = CacheRoots {
        models_dir: models.path().to_path_buf(),
        user_hub_cache: Some(user_cache.path().to_path_buf()),
    };
    let outcome =
        download_sd15(&hub, &roots, &AtomicBool::new(false), &mut Vec::new()).expect("found");
    let Downloaded::InUserCache(located) = outcome else {
        panic!("expected the user's cache, got {outcome:?}");
    };
    assert_eq!(hub.requests().len(), requests_before, "nothing fetched");
    assert!(
        !repo_folder(models.path(), SD15_REPO).exists(),
        "nothing copied"
    );
    let unet = std::fs::canonicalize(located.folder.join(UNET)).expect("resolves");
    assert!(unet.starts_with(std::fs::canonicalize(user_cache.path()).expect("exists")));
    generates(&located.folder);
}

fn easel(args: &[&str], hub_url: &str, home: &Path, token: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_easel"));
    command
        .env("EASEL_CONFIG", "/nonexistent/easel.toml")
        .env("EASEL_DATA_DIR", home.join("data"))
        .env("HF_ENDPOINT", hub_url)
        .env("HF_HOME", home.join("hf"))
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HF_TOKEN")
        .args(args);
    if let Some(token) = token {
        command.env("HF_TOKEN", token);
    }
    command.output().expect("run easel")
}

/// `easel generate` of a 64x64 fox in two steps on the CPU.
fn generate_args<'a>(model: &'a str, models_dir: &'a str, out: &'a str) -> [&'a str; 17] {
    [
        "generate",
        "--model",
        model,
        "--models-dir",
        models_dir,
        "--prompt",
        "a fox",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--device",
        "cpu",
        "--out",
        out,
    ]
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_gated_repository_needs_the_token_and_never_shows_it() {
    if common::parity_missing() {
        return;
    }
    let hub = FakeHub::start();
    hub.serve_folder(GATED_REPO, &common::model("sd15-tiny"), &[], true);
    hub.require_token(TOKEN);
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    let models = models.to_str().expect("utf-8");
    let download = ["download", GATED_REPO, "--models-dir", models];

    let without = easel(&download, hub.url(), home.path(), None);
    assert!(!without.status.success());
    let said = text(&without);
    assert!(
        said.contains("gated") && said.contains("HF_TOKEN"),
        "{said}"
    );

    let wrong = easel(&download, hub.url(), home.path(), Some("hf_wrong_token_77"));
    assert!(!wrong.status.success());
    let said = text(&wrong);
    assert!(said.contains("refused"), "{said}");
    assert!(
        !said.contains("hf_wrong_token_77"),
        "the token is never shown: {said}"
    );

    let with = easel(&download, hub.url(), home.path(), Some(TOKEN));
    assert!(with.status.success(), "{}", text(&with));
    let out = home.path().join("gated.png");
    let generate = generate_args(GATED_REPO, models, out.to_str().expect("utf-8"));
    let generated = easel(&generate, hub.url(), home.path(), Some(TOKEN));
    assert!(generated.status.success(), "{}", text(&generated));
    // Not in what was printed, the log, or the PNG.
    let log = std::fs::read_to_string(home.path().join("data/easel.log")).unwrap_or_default();
    let png = std::fs::read(&out).expect("the PNG");
    for shown in [
        text(&with),
        text(&generated),
        log,
        String::from_utf8_lossy(&png).into_owned(),
    ] {
        assert!(!shown.contains(TOKEN), "the token leaked: {shown}");
    }
}

#[test]
fn offline_a_downloaded_model_generates_and_a_missing_one_says_download_first() {
    if common::parity_missing() {
        return;
    }
    let hub = FakeHub::start();
    serve_sd15(&hub);
    let url = hub.url().to_string();
    let home = tempfile::tempdir().expect("temp dir");
    let models = home.path().join("models");
    let models = models.to_str().expect("utf-8");
    let fetched = easel(
        &["download", "sd15", "--models-dir", models],
        &url,
        home.path(),
        None,
    );
    assert!(fetched.status.success(), "{}", text(&fetched));
    assert!(text(&fetched).contains("100.0%"), "{}", text(&fetched));
    hub.stop();

    let out = home.path().join("offline.png");
    let out = out.to_str().expect("utf-8");
    let generate = |model: &str| {
        let args = generate_args(model, models, out);
        easel(&args, &url, home.path(), None)
    };
    let cached = generate("sd15");
    assert!(cached.status.success(), "{}", text(&cached));
    assert!(Path::new(out).is_file());

    let missing = generate("sdxl");
    assert!(!missing.status.success());
    let said = text(&missing);
    assert!(
        said.contains("not downloaded yet") && said.contains("easel download sdxl"),
        "{said}"
    );

    let recheck = easel(
        &["download", "sd15", "--models-dir", models],
        &url,
        home.path(),
        None,
    );
    assert!(recheck.status.success(), "{}", text(&recheck));
    assert!(
        text(&recheck).contains("not re-checked"),
        "{}",
        text(&recheck)
    );
    let unreachable = easel(
        &["download", "sdxl", "--models-dir", models],
        &url,
        home.path(),
        None,
    );
    assert!(!unreachable.status.success());
    assert!(
        text(&unreachable).contains("could not reach"),
        "{}",
        text(&unreachable)
    );

    let listed = easel(
        &["models", "--models-dir", models, "--device", "cpu"],
        &url,
        home.path(),
        None,
    );
    assert!(listed.status.success(), "{}", text(&listed));
    let listing = text(&listed);
    for entry in catalog::entries() {
        assert!(listing.contains(entry.id), "{} listed: {listing}", entry.id);
    }
    let sd15_line = listing
        .lines()
        .skip_while(|l| !l.starts_with("sd15 "))
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(sd15_line.contains("downloaded ("), "{sd15_line}");
    assert!(listing.contains("not downloaded"), "{listing}");
}

fn download_request(hub: &FakeHub, models: &Path) -> DownloadRequest {
    DownloadRequest {
        model: "sd15".to_string(),
        roots: CacheRoots::only(models),
        prefer_fp16: false,
        endpoint: Some(hub.url().to_string()),
        token: None,
    }
}

#[test]
fn the_engine_reports_download_progress_and_cancels_beside_its_jobs() {
    if common::parity_missing() {
        return;
    }
    let hub = FakeHub::start();
    serve_sd15(&hub);
    let models = tempfile::tempdir().expect("temp dir");
    let engine = jobs::engine();
    let download = engine
        .download(download_request(&hub, models.path()))
        .expect("engine running");
    let mut seen: Vec<DownloadProgress> = Vec::new();
    let folder = loop {
        match engine.events().recv_timeout(jobs::WAIT).expect("an event") {
            Event::DownloadProgress {
                download: d,
                progress,
            } if d == download => seen.push(progress),
            Event::DownloadFinished {
                download: d,
                outcome,
            } if d == download => break outcome.located().folder.clone(),
            Event::DownloadFailed { error, .. } => panic!("download failed: {error}"),
            _ => {}
        }
    };
    assert!(seen.windows(2).all(|p| p[1].bytes_done >= p[0].bytes_done));
    let last = seen.last().expect("progress");
    assert_eq!(
        (last.bytes_done, last.files_done),
        (last.bytes_total, last.files_total)
    );
    generates(&folder);

    // A slow download is cancelled part way; its bytes stay for the next one.
    let slow = tempfile::tempdir().expect("temp dir");
    hub.slow_down(std::time::Duration::from_millis(20));
    let download = engine
        .download(download_request(&hub, slow.path()))
        .expect("engine running");
    loop {
        match engine.events().recv_timeout(jobs::WAIT).expect("an event") {
            Event::DownloadProgress {
                download: d,
                progress,
            } if d == download && progress.file.ends_with(UNET) => {
                engine.cancel_download(download).expect("engine running");
            }
            Event::DownloadFailed { download: d, error } if d == download => {
                assert!(matches!(error, HubError::Cancelled), "{error}");
                break;
            }
            Event::DownloadFinished { .. } => panic!("the download should have been cancelled"),
            _ => {}
        }
    }
    let partial = partial(slow.path(), &hub, UNET);
    assert!(partial.is_file(), "the partial file is kept");
}

#[test]
fn flux_downloads_take_the_single_files_and_borrowed_tokenizers_and_generate() {
    if common::parity_missing() {
        return;
    }
    let hub = FakeHub::start();
    let schnell = common::model("flux-tiny-schnell");
    let without_tokenizers = ["tokenizer/tokenizer.json", "tokenizer_2/tokenizer.json"];
    hub.serve_folder(
        "black-forest-labs/FLUX.1-schnell",
        &schnell,
        &without_tokenizers,
        false,
    );
    let read = |path: &str| std::fs::read(schnell.join(path)).expect("tokenizer");
    hub.serve_file(
        "openai/clip-vit-large-patch14",
        "tokenizer.json",
        read("tokenizer/tokenizer.json"),
    );
    hub.serve_file(
        "lmz/mt5-tokenizers",
        "t5-v1_1-xxl.tokenizer.json",
        read("tokenizer_2/tokenizer.json"),
    );
    // Any other FLUX repository, as it is on the hub, by name.
    hub.serve_folder(
        "easel-test/flux-dev",
        &common::model("flux-tiny-dev"),
        &[],
        false,
    );
    let models = tempfile::tempdir().expect("temp dir");
    let roots = CacheRoots::only(models.path());
    let cancel = AtomicBool::new(false);

    let entry = ModelRef::Catalog(catalog::find("flux-schnell").expect("in the catalog"));
    let catalog_model = hub::download(entry, &client(&hub), &roots, false, &cancel, &mut |_| {})
        .expect("FLUX.1 schnell downloads");
    let repo_model = hub::download(
        ModelRef::Repo("easel-test/flux-dev"),
        &client(&hub),
        &roots,
        false,
        &cancel,
        &mut |_| {},
    )
    .expect("a FLUX repository downloads");
    // Easel reads the Black Forest Labs single files, so the diffusers transformer and VAE
    // weights are never fetched.
    let requests = hub.requests();
    assert!(requests
        .iter()
        .any(|r| r.contains("/resolve/") && r.contains("flux1-dev.safetensors")));
    assert!(
        !requests.iter().any(|r| r.contains("/resolve/")
            && (r.contains("transformer/diffusion_pytorch_model")
                || r.contains("vae/diffusion_pytorch_model"))),
        "{requests:#?}"
    );
    generates(&catalog_model.located().folder);
    generates(&repo_model.located().folder);
}

/// CLIP's `vocab.json` and `merges.txt` (with the `#version` header the hub's files have),
/// made from a `tokenizer.json`.
fn vocab_and_merges(tokenizer_json: &Path) -> (Vec<u8>, Vec<u8>) {
    let text = std::fs::read_to_string(tokenizer_json).expect("tokenizer.json");
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("json");
    let vocab = serde_json::to_vec(&parsed["model"]["vocab"]).expect("vocab");
    let mut merges = String::from("#version: 0.2\n");
    for merge in parsed["model"]["merges"].as_array().expect("merges") {
        let line = match merge {
            serde_json::Value::Array(pair) => format!(
                "{} {}",
                pair[0].as_str().expect("token"),
                pair[1].as_str().expect("token")
            ),
            other => other.as_str().expect("a merge").to_string(),
        };
        merges.push_str(&line);
        merges.push('\n');
    }
    (vocab, merges.into_bytes())
}

#[test]
fn a_repository_with_vocab_and_merges_instead_of_tokenizer_json_generates() {
    if common::parity_missing() {
        return;
    }
    use easel_engine::models::tokenizer::PromptTokenizer;
    let repo = "easel-test/sd15-vocab-merges";
    let tiny = common::model("sd15-tiny");
    let hub = FakeHub::start();
    hub.serve_folder(repo, &tiny, &["tokenizer/tokenizer.json"], false);
    let (vocab, merges) = vocab_and_merges(&tiny.join("tokenizer/tokenizer.json"));
    hub.serve_file(repo, "tokenizer/vocab.json", vocab);
    hub.serve_file(repo, "tokenizer/merges.txt", merges);
    let models = tempfile::tempdir().expect("temp dir");
    let roots = CacheRoots::only(models.path());
    let downloaded = hub::download(
        ModelRef::Repo(repo),
        &client(&hub),
        &roots,
        false,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .expect("downloads");
    let folder = match downloaded {
        Downloaded::Fetched(located) => located.folder,
        other => panic!("expected a fetch, got {other:?}"),
    };
    assert!(!folder.join("tokenizer/tokenizer.json").exists());
    // The same ids as the tokenizer.json it was made from, cut-off words included.
    let from_bpe = PromptTokenizer::load(&folder.join("tokenizer")).expect("from vocab/merges");
    let from_json = PromptTokenizer::load(&tiny.join("tokenizer")).expect("from tokenizer.json");
    let long = "a RED  fox, sitting; in the snow's glow — 42 ünïcödé ".repeat(8);
    for prompt in ["a red fox", "Hello   WORLD!!", "don't stop", long.as_str()] {
        assert_eq!(
            from_bpe.tokenize(prompt).expect("tokenized"),
            from_json.tokenize(prompt).expect("tokenized"),
            "{prompt}"
        );
    }
    generates(&folder);
}

#[test]
fn a_download_does_not_wait_behind_a_model_load() {
    if common::parity_missing() {
        return;
    }
    use easel_engine::engine::{EngineConfig, Fault, FaultPoint};
    let hub = FakeHub::start();
    serve_sd15(&hub);
    let models = tempfile::tempdir().expect("temp dir");
    // The first load of the job holds until the download has finished.
    let (loading_tx, loading_rx) = crossbeam_channel::bounded::<()>(1);
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
    let hook = std::sync::Arc::new(move |point: FaultPoint| {
        if matches!(point, FaultPoint::BeforeLoad(_)) {
            loading_tx.try_send(()).ok();
            release_rx.recv_timeout(jobs::WAIT).ok();
        }
        Fault::Proceed
    });
    let engine = jobs::engine_with(EngineConfig {
        fault_hook: Some(hook),
        ..Default::default()
    });
    let job = engine
        .generate(GenerateRequest::new(common::model("sd15-tiny"), "a fox"))
        .expect("engine running");
    loading_rx.recv_timeout(jobs::WAIT).expect("the load began");
    let download = engine
        .download(download_request(&hub, models.path()))
        .expect("engine running");
    loop {
        match engine.events().recv_timeout(jobs::WAIT).expect("an event") {
            Event::DownloadFinished { download: d, .. } if d == download => break,
            Event::DownloadFailed { error, .. } => panic!("download failed: {error}"),
            Event::Finished { .. } => panic!("the job ended before the download"),
            _ => {}
        }
    }
    for _ in 0..8 {
        release_tx.try_send(()).ok();
    }
    drop(release_tx);
    engine.cancel(job).expect("engine running");
}
