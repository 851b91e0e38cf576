//! Downloads from a hub that misbehaves, on 127.0.0.1: every answer cut short (ranged ones
//! included), two downloads of one blob at once, ids that are paths, listings that continue
//! on another host, and file requests redirected to another host. No test touches the
//! internet, and none needs the parity goldens.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::common::fake_hub::FakeHub;
use easel_engine::hub::download::{sha256_of, RepoPlan};
use easel_engine::hub::{HubClient, HubError, HubToken};

const REPO: &str = "easel-test/big";
const WEIGHTS: &str = "unet/diffusion_pytorch_model.safetensors";
const CONFIG: &str = "unet/config.json";
const BIG_BYTES: usize = 4 << 20;

/// Serves a 4 MB weight file and a small config as `REPO`.
fn serve_big(hub: &FakeHub) {
    let weights: Vec<u8> = (0..BIG_BYTES)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    hub.serve_file(REPO, WEIGHTS, weights);
    hub.serve_file(REPO, CONFIG, br#"{"in_channels": 4}"#.to_vec());
}

fn client(hub: &FakeHub, token: Option<&str>) -> HubClient {
    let token = token.and_then(HubToken::new);
    HubClient::new(Some(hub.url()), token).expect("a hub client")
}

/// Lists `REPO` and fetches both of its files into `root`.
fn fetch(client: &HubClient, root: &Path) -> Result<(), HubError> {
    let listing = client.list(REPO, "main")?;
    let plan = RepoPlan {
        listing,
        paths: vec![CONFIG.to_string(), WEIGHTS.to_string()],
    };
    client.fetch(&[plan], root, &AtomicBool::new(false), &mut |_| {})
}

fn repo_folder(root: &Path) -> PathBuf {
    root.join(format!("models--{}", REPO.replace('/', "--")))
}

fn weight_gets(hub: &FakeHub) -> Vec<String> {
    hub.requests()
        .into_iter()
        .filter(|r| r.starts_with("GET ") && r.contains(WEIGHTS))
        .collect()
}

/// The weights sit in the cache as served, and no partial file is left.
fn assert_one_intact_blob(hub: &FakeHub, root: &Path) {
    let blob = repo_folder(root)
        .join("blobs")
        .join(hub.sha256(REPO, WEIGHTS));
    assert_eq!(
        sha256_of(&blob).expect("the blob"),
        hub.sha256(REPO, WEIGHTS)
    );
    let partials: Vec<_> = common::files_under(root)
        .into_iter()
        .filter(|f| f.ends_with(".incomplete") || f.ends_with(".tmp"))
        .collect();
    assert!(partials.is_empty(), "{partials:?}");
}

#[test]
fn a_hub_that_cuts_every_answer_still_delivers_in_a_bounded_number_of_requests() {
    let hub = FakeHub::start();
    serve_big(&hub);
    let cut_bytes = 300_000;
    hub.cut_every_get(cut_bytes);
    let models = tempfile::tempdir().expect("temp dir");
    fetch(&client(&hub, None), models.path()).expect("the download completes");
    assert_one_intact_blob(&hub, models.path());
    let gets = weight_gets(&hub);
    // Each answer adds its bytes to what is on disk: no answer is taken for a restart.
    let needed = BIG_BYTES.div_ceil(cut_bytes);
    assert_eq!(gets.len(), needed, "{gets:#?}");
    for (index, get) in gets.iter().enumerate().skip(1) {
        assert!(
            get.contains(&format!("bytes={}-", index * cut_bytes)),
            "{get}"
        );
    }
}

#[test]
fn two_downloads_of_one_blob_at_once_end_with_one_intact_blob() {
    let hub = FakeHub::start();
    serve_big(&hub);
    hub.slow_down(std::time::Duration::from_millis(5));
    let models = tempfile::tempdir().expect("temp dir");
    let root = models.path().to_path_buf();
    let url = hub.url().to_string();
    let downloads: Vec<std::thread::JoinHandle<Result<(), HubError>>> = (0..2)
        .map(|index| {
            let root = root.clone();
            let url = url.clone();
            std::thread::Builder::new()
                .name(format!("download-{index}"))
                .spawn(move || {
                    let client = HubClient::new(Some(&url), None).expect("a hub client");
                    let listing = client.list(REPO, "main")?;
                    let plan = RepoPlan {
                        listing,
                        paths: vec![WEIGHTS.to_string()],
                    };
                    client.fetch(&[plan], &root, &AtomicBool::new(false), &mut |_| {})
                })
        })
        .collect::<Result<_, _>>()
        .expect("threads start");
    for download in downloads {
        download.join().expect("no panic").expect("both succeed");
    }
    assert_one_intact_blob(&hub, &root);
    // The second waited for the first and reused its blob.
    assert_eq!(weight_gets(&hub).len(), 1, "{:#?}", hub.requests());
    let lock = root
        .join(".locks")
        .join(format!("models--{}", REPO.replace('/', "--")))
        .join(format!("{}.lock", hub.sha256(REPO, WEIGHTS)));
    assert!(lock.is_file(), "{}", lock.display());
}

#[test]
fn a_commit_that_is_not_a_hash_is_refused_before_anything_is_written() {
    let hub = FakeHub::start();
    serve_big(&hub);
    hub.set_commit(REPO, "../../../../escaped");
    let models = tempfile::tempdir().expect("temp dir");
    let error = fetch(&client(&hub, None), models.path()).expect_err("refused");
    assert!(error.to_string().contains("not a commit hash"), "{error}");
    assert!(common::files_under(models.path()).is_empty());
}

#[test]
fn blob_ids_that_are_not_hashes_never_become_paths() {
    for hostile in ["../../../../escaped", "abc", "/etc/passwd"] {
        let hub = FakeHub::start();
        serve_big(&hub);
        hub.list_oid(REPO, WEIGHTS, hostile);
        let models = tempfile::tempdir().expect("temp dir");
        let error = fetch(&client(&hub, None), models.path()).expect_err("refused");
        assert!(error.to_string().contains("not a hash"), "{error}");
        assert!(common::files_under(models.path()).is_empty(), "{hostile}");
    }
}

#[test]
fn a_listing_that_continues_on_another_host_is_not_followed_and_gets_no_token() {
    let hub = FakeHub::start();
    serve_big(&hub);
    let elsewhere = FakeHub::start();
    hub.next_page_at(&format!(
        "{}/api/models/{REPO}/tree/main?cursor=2",
        elsewhere.url()
    ));
    let models = tempfile::tempdir().expect("temp dir");
    let error = fetch(&client(&hub, Some("hf_secret_1")), models.path()).expect_err("refused");
    assert!(error.to_string().contains("another host"), "{error}");
    assert!(
        elsewhere.requests().is_empty(),
        "{:?}",
        elsewhere.requests()
    );
}

#[test]
fn a_file_redirected_to_another_host_arrives_without_the_token() {
    let hub = FakeHub::start();
    serve_big(&hub);
    let cdn = FakeHub::start();
    serve_big(&cdn);
    hub.redirect_files_to(cdn.url());
    let models = tempfile::tempdir().expect("temp dir");
    fetch(&client(&hub, Some("hf_secret_2")), models.path()).expect("fetched through the CDN");
    assert_one_intact_blob(&hub, models.path());
    let at_cdn = cdn.requests();
    assert!(at_cdn.iter().any(|r| r.contains(WEIGHTS)), "{at_cdn:?}");
    assert!(at_cdn.iter().all(|r| !r.ends_with(" auth")), "{at_cdn:?}");
    assert!(
        hub.requests().iter().any(|r| r.ends_with(" auth")),
        "the hub itself gets the token"
    );
}
