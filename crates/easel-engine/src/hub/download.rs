//! Fetching repository files into a cache root in the hub's layout, through `hf-hub`.
//!
//! `hf-hub` neither resumes a cut transfer nor checks what arrived, and its byte stream hides
//! the status and headers that tell a partial answer from a whole one, so Easel makes the
//! file requests itself: a file grows as `blobs/<id>.incomplete`, a cut transfer continues
//! with a `Range` request from the bytes already on disk (appended only when the hub answers
//! `206` with a `Content-Range` starting there; a `200` is the whole file and starts it
//! over), the finished file is checked against the size and sha256 the hub lists (a damaged
//! one is removed and fetched again), and only then becomes `blobs/<id>` with its snapshot
//! link. One download at a time holds a blob's lock (`.locks/`, as the Python client keeps
//! them), so two downloads of one file never write into each other. Cancel is honoured
//! between chunks and while waiting for a lock.
//!
//! A hub is not trusted: the ids it sends become paths only when they are hex of the right
//! length, listing pages are followed only on the endpoint's own host, and the token goes
//! only there (reqwest drops it when a file request is redirected to another host).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hf_hub::HFError;
use sha2::{Digest, Sha256};

use super::cache::{is_commit_hash, is_hex_of_length, RepoFolder};
use super::error::HubError;
use super::token::HubToken;

/// Failed attempts in a row, without a byte of progress, before a file is given up.
const ATTEMPTS_WITHOUT_PROGRESS: usize = 4;
/// How often a download waiting for another's lock on the same blob looks again.
const LOCK_POLL: Duration = Duration::from_millis(100);
/// How often progress is reported while bytes flow.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Where a download stands, across all of its files.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadProgress {
    /// The file being fetched, as `repo/path`.
    pub file: String,
    /// Files finished (fetched or found intact).
    pub files_done: usize,
    /// Files in the download.
    pub files_total: usize,
    /// Bytes on disk, kept partial files included.
    pub bytes_done: u64,
    /// Bytes of every file together.
    pub bytes_total: u64,
    /// Bytes per second received in this run.
    pub bytes_per_sec: f64,
}

/// One file as the hub lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    /// Path in the repository.
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// The blob's name in the cache: the LFS sha256, else the git object id.
    pub blob_id: String,
    /// The content's sha256, for LFS files.
    pub sha256: Option<String>,
}

/// A repository at one commit, as listed by the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoListing {
    /// `org/name`.
    pub repo: String,
    /// The revision asked for (a branch, or a commit).
    pub revision: String,
    /// The commit it resolved to.
    pub commit: String,
    /// Every file, by path.
    pub files: BTreeMap<String, ListedFile>,
}

/// The files to fetch from one listed repository.
#[derive(Debug, Clone)]
pub struct RepoPlan {
    /// The listing they come from.
    pub listing: RepoListing,
    /// Paths to fetch.
    pub paths: Vec<String>,
}

/// A hub connection: endpoint, token, and the runtime that drives `hf-hub`.
pub struct HubClient {
    client: hf_hub::HFClient,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    token: Option<HubToken>,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("endpoint", &self.endpoint())
            .field("token", &self.token)
            .finish()
    }
}

impl HubClient {
    /// A client for `endpoint` (else `HF_ENDPOINT`, else huggingface.co) with `token` (else
    /// the user's, as `HubToken::from_environment` finds it).
    pub fn new(endpoint: Option<&str>, token: Option<HubToken>) -> Result<Self, HubError> {
        let unexpected = |message: String| HubError::Hub {
            repo: String::new(),
            message,
        };
        let token = token.or_else(HubToken::from_environment);
        let mut builder = hf_hub::HFClient::builder()
            .user_agent(concat!("easel/", env!("CARGO_PKG_VERSION")))
            .retry_max_attempts(1)
            .retry_base_delay(Duration::from_millis(200));
        if let Some(endpoint) = endpoint {
            builder = builder.endpoint(endpoint);
        }
        if let Some(token) = &token {
            builder = builder.token(token.secret());
        }
        let client = builder
            .build()
            .map_err(|e| unexpected(format!("the hub client could not start: {e}")))?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("easel/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| unexpected(format!("the HTTP client could not start: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unexpected(format!("the download runtime could not start: {e}")))?;
        Ok(Self {
            client,
            http,
            runtime,
            token,
        })
    }

    /// A client for `HF_ENDPOINT` (or huggingface.co) with the user's token, if any.
    pub fn from_environment() -> Result<Self, HubError> {
        Self::new(None, None)
    }

    /// The hub's base address.
    pub fn endpoint(&self) -> &str {
        self.client.endpoint()
    }

    /// Whether a token is sent.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn repo(&self, repo: &str) -> hf_hub::repository::HFRepository<hf_hub::RepoTypeModel> {
        let (owner, name) = hf_hub::split_id(repo);
        self.client.model(owner, name)
    }

    /// The commit `revision` of `repo` points at and every file in it.
    pub fn list(&self, repo: &str, revision: &str) -> Result<RepoListing, HubError> {
        let handle = self.repo(repo);
        self.runtime.block_on(async {
            let info = handle
                .info()
                .revision(revision)
                .send()
                .await
                .map_err(|e| self.hub_error(e, repo, revision))?;
            let commit = info.sha.ok_or_else(|| HubError::Hub {
                repo: repo.to_string(),
                message: "its info has no commit".to_string(),
            })?;
            if !is_commit_hash(&commit) {
                return Err(HubError::Hub {
                    repo: repo.to_string(),
                    message: format!("it names its commit {commit:?}, which is not a commit hash"),
                });
            }
            let files = self.list_tree(repo, revision, &commit).await?;
            Ok(RepoListing {
                repo: repo.to_string(),
                revision: revision.to_string(),
                commit,
                files,
            })
        })
    }

    /// Every file of `repo` at `commit`, from the hub's tree listing, page by page. Read
    /// here rather than through `hf-hub`, whose listing drops the LFS sha256 the hub sends
    /// (`lfs.oid`), which names the blob and checks what arrives.
    async fn list_tree(
        &self,
        repo: &str,
        revision: &str,
        commit: &str,
    ) -> Result<BTreeMap<String, ListedFile>, HubError> {
        let mut url = format!(
            "{}/api/models/{repo}/tree/{commit}?recursive=true",
            self.endpoint()
        );
        let mut files = BTreeMap::new();
        loop {
            let mut request = self.http.get(&url);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token.secret());
            }
            let unreachable = |e: reqwest::Error| HubError::Unreachable {
                endpoint: self.endpoint().to_string(),
                message: self.redact(&e.to_string()),
            };
            let response = request.send().await.map_err(unreachable)?;
            let status = response.status().as_u16();
            if status != 200 {
                return Err(self.status_error(status, repo, revision));
            }
            let next = next_page(response.headers());
            let page: Vec<TreeEntry> = response.json().await.map_err(|e| HubError::Hub {
                repo: repo.to_string(),
                message: format!("its file listing could not be read: {e}"),
            })?;
            for entry in page.into_iter().filter(|e| e.kind == "file") {
                let sha256 = entry.lfs.map(|lfs| lfs.oid);
                let ids_are_hex = is_hex_of_length(&entry.oid, 40)
                    && sha256.as_deref().is_none_or(|s| is_hex_of_length(s, 64));
                if !ids_are_hex {
                    return Err(HubError::Hub {
                        repo: repo.to_string(),
                        message: format!(
                            "it lists {:?} under an id that is not a hash ({:?}); nothing was written",
                            entry.path,
                            sha256.as_deref().unwrap_or(&entry.oid)
                        ),
                    });
                }
                let listed = ListedFile {
                    path: entry.path.clone(),
                    size_bytes: entry.size,
                    blob_id: sha256.clone().unwrap_or(entry.oid),
                    sha256,
                };
                files.insert(entry.path, listed);
            }
            match next {
                Some(next) if same_origin(&next, self.endpoint()) => url = next,
                Some(next) => {
                    return Err(HubError::Hub {
                        repo: repo.to_string(),
                        message: format!(
                            "its listing continues on another host ({next}), which Easel does not follow"
                        ),
                    })
                }
                None => return Ok(files),
            }
        }
    }

    /// Fetches every planned file into `root` (skipping intact ones, replacing damaged ones,
    /// resuming partial ones), links the snapshots and records the refs. `on_progress` hears
    /// of every chunk at most every 100 ms and of every finished file.
    pub fn fetch(
        &self,
        plans: &[RepoPlan],
        root: &Path,
        cancel: &AtomicBool,
        on_progress: &mut dyn FnMut(&DownloadProgress),
    ) -> Result<(), HubError> {
        let files_total = plans.iter().map(|p| p.paths.len()).sum();
        let bytes_total = plans
            .iter()
            .flat_map(|p| p.paths.iter().filter_map(|path| p.listing.files.get(path)))
            .map(|f| f.size_bytes)
            .sum();
        let mut tally = Tally {
            started: Instant::now(),
            last_report: None,
            reported_file: String::new(),
            received_bytes: 0,
            finished_bytes: 0,
            current_file_bytes: 0,
            progress: DownloadProgress {
                file: String::new(),
                files_done: 0,
                files_total,
                bytes_done: 0,
                bytes_total,
                bytes_per_sec: 0.0,
            },
        };
        for plan in plans {
            let listing = &plan.listing;
            let folder = RepoFolder::new(root, &listing.repo);
            for path in &plan.paths {
                if !is_plain_relative(path) {
                    return Err(HubError::Hub {
                        repo: listing.repo.clone(),
                        message: format!("it lists a file outside the repository: {path:?}"),
                    });
                }
                let file = listing
                    .files
                    .get(path)
                    .ok_or_else(|| HubError::FileNotInRepo {
                        repo: listing.repo.clone(),
                        path: path.clone(),
                    })?;
                tally.progress.file = format!("{}/{}", listing.repo, path);
                self.ensure_blob(listing, file, &folder, cancel, &mut tally, on_progress)?;
                folder
                    .link_snapshot_file(&listing.commit, path, &file.blob_id)
                    .map_err(HubError::write(
                        folder.snapshot_dir(&listing.commit).join(path),
                    ))?;
                tally.progress.files_done += 1;
                tally.report(on_progress, true);
            }
            folder
                .write_ref(&listing.revision, &listing.commit)
                .map_err(HubError::write(folder.dir.join("refs")))?;
        }
        Ok(())
    }

    /// Makes `blobs/<id>` hold the file, intact.
    fn ensure_blob(
        &self,
        listing: &RepoListing,
        file: &ListedFile,
        folder: &RepoFolder,
        cancel: &AtomicBool,
        tally: &mut Tally,
        on_progress: &mut dyn FnMut(&DownloadProgress),
    ) -> Result<(), HubError> {
        let blob = folder.blob_path(&file.blob_id);
        // Another download of this blob (the window and the command line, or two models
        // sharing a file) finishes first; this one then finds the blob intact and reuses it.
        let _lock = BlobLock::acquire(&folder.lock_path(&file.blob_id), cancel)?;
        if blob.is_file() {
            if check_content(&blob, file).is_ok() {
                tally.file_done(file.size_bytes);
                return Ok(());
            }
            tracing::warn!(file = %blob.display(), "removing a damaged file to fetch it again");
            std::fs::remove_file(&blob).map_err(HubError::write(&blob))?;
        }
        let partial = folder.incomplete_path(&file.blob_id);
        if let Some(parent) = partial.parent() {
            std::fs::create_dir_all(parent).map_err(HubError::write(parent))?;
        }
        let mut refetched = false;
        loop {
            self.stream_to(listing, file, &partial, cancel, tally, on_progress)?;
            match check_content(&partial, file) {
                Ok(()) => break,
                Err(actual) if !refetched => {
                    tracing::warn!(file = %file.path, %actual, "fetched file is damaged; fetching it again");
                    std::fs::remove_file(&partial).map_err(HubError::write(&partial))?;
                    refetched = true;
                }
                Err(actual) => {
                    std::fs::remove_file(&partial).map_err(HubError::write(&partial))?;
                    return Err(HubError::Damaged {
                        repo: listing.repo.clone(),
                        path: file.path.clone(),
                        expected: file.sha256.clone().unwrap_or_default(),
                        actual,
                    });
                }
            }
        }
        std::fs::rename(&partial, &blob).map_err(HubError::write(&blob))?;
        tally.file_done(file.size_bytes);
        Ok(())
    }

    /// Appends the rest of the file to `partial`, resuming after cuts, until it has
    /// `size_bytes` or the attempts run out.
    fn stream_to(
        &self,
        listing: &RepoListing,
        file: &ListedFile,
        partial: &Path,
        cancel: &AtomicBool,
        tally: &mut Tally,
        on_progress: &mut dyn FnMut(&DownloadProgress),
    ) -> Result<(), HubError> {
        let mut failures = 0;
        loop {
            let mut start = partial_len(partial);
            if start > file.size_bytes {
                // Longer than the file can be: nothing of it is trusted.
                truncate(partial, 0).map_err(HubError::write(partial))?;
                start = 0;
            }
            if start == file.size_bytes {
                return Ok(());
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(HubError::Cancelled);
            }
            let outcome = self.runtime.block_on(self.stream_once(
                listing,
                file,
                partial,
                start,
                cancel,
                tally,
                on_progress,
            ));
            match outcome {
                Ok(()) => {}
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Retry(message)) => {
                    let now = partial_len(partial);
                    failures = if now > start { 1 } else { failures + 1 };
                    tracing::info!(file = %file.path, bytes = now, %message, "transfer cut; resuming");
                    if failures >= ATTEMPTS_WITHOUT_PROGRESS {
                        return Err(HubError::Interrupted {
                            repo: listing.repo.clone(),
                            path: file.path.clone(),
                            done_bytes: now,
                            total_bytes: file.size_bytes,
                            message,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(200 * failures as u64));
                }
            }
        }
    }

    /// One request from byte `start` to the end, appended to `partial` chunk by chunk. The
    /// bytes kept on disk are decided by the answer: `206` whose `Content-Range` starts at
    /// `start` continues the file; `200` is the whole file and replaces it; anything else
    /// that is not the hub's refusal starts the file over at the next attempt.
    #[allow(clippy::too_many_arguments)]
    async fn stream_once(
        &self,
        listing: &RepoListing,
        file: &ListedFile,
        partial: &Path,
        start: u64,
        cancel: &AtomicBool,
        tally: &mut Tally,
        on_progress: &mut dyn FnMut(&DownloadProgress),
    ) -> Result<(), Failure> {
        let write_error = |e: std::io::Error| Failure::Final(HubError::write(partial)(e));
        let url = self
            .resolve_url(&listing.repo, &listing.commit, &file.path)
            .map_err(Failure::Final)?;
        let mut request = self.http.get(url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.secret());
        }
        if start > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={start}-"));
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| Failure::Retry(self.redact(&e.to_string())))?;
        let status = response.status().as_u16();
        let keep_bytes = match status {
            200 => 0,
            206 if content_range_start(response.headers()) == Some(start) => start,
            206 | 416 => {
                // A range the hub did not answer as asked: what is on disk cannot be
                // continued, so the next attempt fetches the file from its first byte.
                truncate(partial, 0).map_err(write_error)?;
                return Err(Failure::Retry(format!(
                    "the hub answered a request from byte {start} with status {status} and {:?}",
                    response.headers().get(reqwest::header::CONTENT_RANGE)
                )));
            }
            404 => {
                return Err(Failure::Final(HubError::FileNotInRepo {
                    repo: listing.repo.clone(),
                    path: file.path.clone(),
                }))
            }
            408 | 429 | 500..=599 => {
                return Err(Failure::Retry(format!(
                    "the hub answered with status {status}"
                )))
            }
            _ => {
                return Err(Failure::Final(self.status_error(
                    status,
                    &listing.repo,
                    &listing.revision,
                )))
            }
        };
        truncate(partial, keep_bytes).map_err(write_error)?;
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .open(partial)
            .map_err(write_error)?;
        tally.file_on_disk(keep_bytes);
        let mut written = keep_bytes;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    out.flush().map_err(write_error)?;
                    return Err(Failure::Retry(self.redact(&e.to_string())));
                }
            };
            // A hub that sends more than the file holds is cut off at its listed size.
            let room = file.size_bytes.saturating_sub(written);
            let usable = &chunk[..chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
            out.write_all(usable).map_err(write_error)?;
            written += usable.len() as u64;
            tally.received(usable.len() as u64);
            tally.report(on_progress, false);
            if cancel.load(Ordering::Relaxed) {
                out.flush().map_err(write_error)?;
                return Err(Failure::Final(HubError::Cancelled));
            }
            if usable.len() < chunk.len() {
                break;
            }
        }
        out.flush().map_err(write_error)?;
        Ok(())
    }

    /// `{endpoint}/{repo}/resolve/{commit}/{path}`, each path segment escaped.
    fn resolve_url(&self, repo: &str, commit: &str, path: &str) -> Result<reqwest::Url, HubError> {
        let invalid = |what: String| HubError::Hub {
            repo: repo.to_string(),
            message: what,
        };
        let base = format!(
            "{}/{repo}/resolve/{commit}/",
            self.endpoint().trim_end_matches('/')
        );
        let mut url = reqwest::Url::parse(&base)
            .map_err(|e| invalid(format!("no file address can be made from {base:?}: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| invalid(format!("{base:?} cannot hold a file path")))?
            .pop_if_empty()
            .extend(path.split('/'));
        Ok(url)
    }

    fn redact(&self, text: &str) -> String {
        match &self.token {
            Some(token) => token.redact(text),
            None => text.to_string(),
        }
    }

    /// What a refusal by HTTP status means for the user.
    fn status_error(&self, status: u16, repo: &str, revision: &str) -> HubError {
        let endpoint = self.endpoint().to_string();
        match status {
            401 | 403 if self.has_token() => HubError::Refused {
                repo: repo.to_string(),
                endpoint,
            },
            401 | 403 => HubError::GatedWithoutToken {
                repo: repo.to_string(),
                endpoint,
            },
            404 => HubError::RepoNotFound {
                repo: repo.to_string(),
                revision: revision.to_string(),
            },
            other => HubError::Hub {
                repo: repo.to_string(),
                message: format!("HTTP status {other}"),
            },
        }
    }

    /// What an `hf-hub` error means for the user.
    fn hub_error(&self, error: HFError, repo: &str, revision: &str) -> HubError {
        let endpoint = self.endpoint().to_string();
        match error {
            HFError::AuthRequired { .. } | HFError::Forbidden { .. } if self.has_token() => {
                HubError::Refused {
                    repo: repo.to_string(),
                    endpoint,
                }
            }
            HFError::AuthRequired { .. } | HFError::Forbidden { .. } => {
                HubError::GatedWithoutToken {
                    repo: repo.to_string(),
                    endpoint,
                }
            }
            HFError::RepoNotFound { .. } | HFError::RevisionNotFound { .. } => {
                HubError::RepoNotFound {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                }
            }
            HFError::EntryNotFound { path, .. } => HubError::FileNotInRepo {
                repo: repo.to_string(),
                path,
            },
            other if is_transport(&other) => HubError::Unreachable {
                endpoint,
                message: self.redact(&other.to_string()),
            },
            other => HubError::Hub {
                repo: repo.to_string(),
                message: self.redact(&other.to_string()),
            },
        }
    }
}

/// One entry of the hub's tree listing.
#[derive(serde::Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    oid: String,
    #[serde(default)]
    size: u64,
    path: String,
    lfs: Option<TreeLfs>,
}

/// The LFS part of a listed file: `oid` is the content's sha256.
#[derive(serde::Deserialize)]
struct TreeLfs {
    oid: String,
}

/// The `rel="next"` address of a paginated listing's `Link` header.
fn next_page(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let link = headers.get(reqwest::header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// The first byte a `Content-Range: bytes FIRST-LAST/TOTAL` answer holds.
fn content_range_start(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let value = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// Whether `url` is on the same scheme, host and port as `endpoint`.
fn same_origin(url: &str, endpoint: &str) -> bool {
    match (reqwest::Url::parse(url), reqwest::Url::parse(endpoint)) {
        (Ok(url), Ok(endpoint)) => url.origin() == endpoint.origin(),
        _ => false,
    }
}

/// Cuts `path` to `bytes` (creating it when missing).
fn truncate(path: &Path, bytes: u64) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    if file.metadata()?.len() != bytes {
        file.set_len(bytes)?;
    }
    Ok(())
}

/// The exclusive lock on one blob, held while it is fetched; released when dropped.
struct BlobLock {
    _file: std::fs::File,
}

impl BlobLock {
    /// Waits for the lock at `path`, giving up when `cancel` is set.
    fn acquire(path: &Path, cancel: &AtomicBool) -> Result<Self, HubError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(HubError::write(parent))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(HubError::write(path))?;
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if !announced {
                        tracing::info!(lock = %path.display(), "another download is fetching this file; waiting for it");
                        announced = true;
                    }
                    if cancel.load(Ordering::Relaxed) {
                        return Err(HubError::Cancelled);
                    }
                    std::thread::sleep(LOCK_POLL);
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(HubError::write(path)(e)),
            }
        }
    }
}

/// How one request ended badly.
enum Failure {
    /// Worth another request from where the file now ends.
    Retry(String),
    /// Not worth retrying.
    Final(HubError),
}

/// Whether the error is the connection's rather than the hub's answer.
fn is_transport(error: &HFError) -> bool {
    matches!(error, HFError::Request { .. })
}

/// Progress so far and when it was last reported. Bytes done are the finished files plus
/// what the current file has on disk, so a resumed file counts its kept bytes.
struct Tally {
    started: Instant,
    last_report: Option<Instant>,
    reported_file: String,
    received_bytes: u64,
    finished_bytes: u64,
    current_file_bytes: u64,
    progress: DownloadProgress,
}

impl Tally {
    /// The current file has `bytes` on disk before more arrive.
    fn file_on_disk(&mut self, bytes: u64) {
        self.current_file_bytes = bytes;
        self.progress.bytes_done = self.finished_bytes + bytes;
    }

    /// A file of `bytes` is in place, fetched or found intact.
    fn file_done(&mut self, bytes: u64) {
        self.finished_bytes += bytes;
        self.file_on_disk(0);
    }

    fn received(&mut self, bytes: u64) {
        self.received_bytes += bytes;
        self.file_on_disk(self.current_file_bytes + bytes);
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.progress.bytes_per_sec = self.received_bytes as f64 / secs;
        }
    }

    /// Reports when `always`, when a new file has started, or when the interval has passed.
    fn report(&mut self, on_progress: &mut dyn FnMut(&DownloadProgress), always: bool) {
        let due = self
            .last_report
            .is_none_or(|last| last.elapsed() >= PROGRESS_INTERVAL);
        let new_file = self.reported_file != self.progress.file;
        if always || due || new_file {
            self.last_report = Some(Instant::now());
            self.reported_file.clone_from(&self.progress.file);
            on_progress(&self.progress);
        }
    }
}

/// Whether a listed path stays inside the snapshot folder (no `..`, not absolute).
fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

fn partial_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Whether the file has the listed size and (for LFS files) sha256; the actual hash or
/// size when not.
fn check_content(path: &Path, file: &ListedFile) -> Result<(), String> {
    let size = partial_len(path);
    if size != file.size_bytes {
        return Err(format!("{size} bytes instead of {}", file.size_bytes));
    }
    let Some(expected) = &file.sha256 else {
        return Ok(());
    };
    let actual = sha256_of(path).map_err(|e| format!("unreadable: {e}"))?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(actual)
    }
}

/// The hex sha256 of a file's content.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The path `listing` has for `wanted`, or its `fallback` (the full-precision file when
/// the repository has no fp16 variant).
pub fn pick_path(listing: &RepoListing, wanted: &str, fallback: &str) -> Result<String, HubError> {
    [wanted, fallback]
        .into_iter()
        .find(|p| listing.files.contains_key(*p))
        .map(str::to_string)
        .ok_or_else(|| HubError::FileNotInRepo {
            repo: listing.repo.clone(),
            path: fallback.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_paths_must_stay_inside_the_snapshot() {
        assert!(is_plain_relative(
            "unet/diffusion_pytorch_model.safetensors"
        ));
        for bad in [
            "../config.json",
            "/etc/passwd",
            "unet/../../x",
            "a//b",
            "a\\b",
            "",
        ] {
            assert!(!is_plain_relative(bad), "{bad}");
        }
    }
}
