//! A Hugging Face Hub stand-in on 127.0.0.1 for the download tests: repository info, the
//! recursive tree listing (LFS files with their sha256 as `lfs.oid`), and file resolve with
//! HEAD, GET and byte ranges, with the headers the real hub sends (`X-Repo-Commit`, `ETag`,
//! `X-Linked-Etag`, `X-Linked-Size`, `Content-Range`). Gated repositories refuse requests
//! without the right bearer token as the hub does (401 without one, 403 with a wrong one).
//! Faults: the next GET of a file, or every GET, can be cut after some bytes; hostile ids
//! (a commit or blob id that is a path), a listing whose next page is on another host, and
//! file requests redirected to another host (as the hub does to its CDN).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// A served file.
struct ServedFile {
    bytes: Vec<u8>,
    sha256: String,
    lfs: bool,
}

/// A served repository.
struct ServedRepo {
    commit: String,
    files: BTreeMap<String, ServedFile>,
    gated: bool,
}

#[derive(Default)]
struct HubState {
    repos: BTreeMap<String, ServedRepo>,
    token: Option<String>,
    /// `(repo, path, bytes)`: the next GET of that file sends this many bytes and hangs up.
    cut: Option<(String, String, usize)>,
    /// Every request, as "METHOD target range".
    log: Vec<String>,
    /// A pause after every 64 KiB of a file's body, to make downloads slow.
    pause_per_chunk: Option<std::time::Duration>,
    /// Every GET of a file sends at most this many bytes of its body and hangs up.
    cut_every: Option<usize>,
    /// The listing's pages say that they continue at this address.
    next_page: Option<String>,
    /// File requests answer `302` to the same path on this base address.
    redirect_files: Option<String>,
    /// Ids the listing sends instead of the real ones: `(repo, path) -> oid`.
    listed_oids: BTreeMap<(String, String), String>,
}

/// The running fake hub.
pub struct FakeHub {
    address: String,
    state: Arc<Mutex<HubState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FakeHub {
    /// Fetches catalog entry `entry` from this hub into a cache at `models` (nothing there
    /// yet): the folder it was assembled in.
    #[allow(dead_code)]
    pub fn fetch_catalog_entry(
        &self,
        entry: &'static easel_engine::hub::catalog::CatalogEntry,
        models: &Path,
    ) -> easel_engine::hub::Located {
        use easel_engine::hub::{self, CacheRoots, Downloaded, HubClient, ModelRef};
        let client = HubClient::new(Some(self.url()), None).expect("client");
        let downloaded = hub::download(
            ModelRef::Catalog(entry),
            &client,
            &CacheRoots::only(models),
            false,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .expect("downloads");
        let Downloaded::Fetched(located) = downloaded else {
            panic!("expected a fetch, got {downloaded:?}");
        };
        located
    }

    /// Starts serving on a free port.
    pub fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake hub");
        let address = format!("http://{}", listener.local_addr().expect("its address"));
        let state = Arc::new(Mutex::new(HubState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("fake-hub".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let state = Arc::clone(&state);
                        let _ = std::thread::Builder::new()
                            .name("fake-hub-conn".into())
                            .spawn(move || serve(stream, &state));
                    }
                })
                .expect("spawn the fake hub")
        };
        FakeHub {
            address,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub fn url(&self) -> &str {
        &self.address
    }

    /// Serves every file under `dir` (but `skip`) as `repo`; weights are LFS files.
    pub fn serve_folder(&self, repo: &str, dir: &Path, skip: &[&str], gated: bool) {
        let mut files = BTreeMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(folder) = pending.pop() {
            for entry in std::fs::read_dir(&folder).expect("read a served folder") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                let relative = path
                    .strip_prefix(dir)
                    .expect("inside")
                    .to_string_lossy()
                    .replace('\\', "/");
                if !skip.contains(&relative.as_str()) {
                    files.insert(relative, std::fs::read(&path).expect("read a served file"));
                }
            }
        }
        for (path, bytes) in files {
            self.serve_file(repo, &path, bytes);
        }
        let mut state = self.state.lock().expect("hub state");
        if let Some(served) = state.repos.get_mut(repo) {
            served.gated = gated;
        }
    }

    /// Serves one more file in `repo` (created on first use).
    pub fn serve_file(&self, repo: &str, path: &str, bytes: Vec<u8>) {
        let mut state = self.state.lock().expect("hub state");
        let commit = hex(&Sha256::digest(repo.as_bytes()))[..40].to_string();
        let served = state.repos.entry(repo.to_string()).or_insert(ServedRepo {
            commit,
            files: BTreeMap::new(),
            gated: false,
        });
        let lfs = path.ends_with(".safetensors") || path.ends_with(".gguf");
        let sha256 = hex(&Sha256::digest(&bytes));
        served
            .files
            .insert(path.to_string(), ServedFile { bytes, sha256, lfs });
    }

    /// The token gated repositories accept.
    pub fn require_token(&self, token: &str) {
        self.state.lock().expect("hub state").token = Some(token.to_string());
    }

    /// The next GET of `path` in `repo` sends `bytes` bytes of the body and hangs up.
    pub fn cut_next_get(&self, repo: &str, path: &str, bytes: usize) {
        self.state.lock().expect("hub state").cut = Some((repo.into(), path.into(), bytes));
    }

    /// Every GET of a file from now on sends at most `bytes` bytes of its body and hangs up,
    /// ranged ones included.
    pub fn cut_every_get(&self, bytes: usize) {
        self.state.lock().expect("hub state").cut_every = Some(bytes);
    }

    /// Serves `repo` at `commit`, whatever that is (a hostile hub sends paths).
    pub fn set_commit(&self, repo: &str, commit: &str) {
        let mut state = self.state.lock().expect("hub state");
        if let Some(served) = state.repos.get_mut(repo) {
            served.commit = commit.to_string();
        }
    }

    /// The listing names `path` of `repo` by `oid` (and `lfs.oid`) instead of its hash.
    pub fn list_oid(&self, repo: &str, path: &str, oid: &str) {
        let mut state = self.state.lock().expect("hub state");
        state
            .listed_oids
            .insert((repo.to_string(), path.to_string()), oid.to_string());
    }

    /// Every listing page says that it continues at `url`.
    pub fn next_page_at(&self, url: &str) {
        self.state.lock().expect("hub state").next_page = Some(url.to_string());
    }

    /// File requests are redirected to the same path under `base` (another fake hub).
    pub fn redirect_files_to(&self, base: &str) {
        self.state.lock().expect("hub state").redirect_files = Some(base.to_string());
    }

    /// Pauses after every 64 KiB of every file's body from now on.
    pub fn slow_down(&self, pause_per_chunk: std::time::Duration) {
        self.state.lock().expect("hub state").pause_per_chunk = Some(pause_per_chunk);
    }

    /// The commit `repo` is served at.
    pub fn commit(&self, repo: &str) -> String {
        let state = self.state.lock().expect("hub state");
        state
            .repos
            .get(repo)
            .map(|r| r.commit.clone())
            .unwrap_or_default()
    }

    /// The sha256 of a served file.
    pub fn sha256(&self, repo: &str, path: &str) -> String {
        let state = self.state.lock().expect("hub state");
        let file = state.repos.get(repo).and_then(|r| r.files.get(path));
        file.map(|f| f.sha256.clone()).unwrap_or_default()
    }

    /// Total bytes of the given files of `repo`.
    pub fn size(&self, repo: &str, path: &str) -> u64 {
        let state = self.state.lock().expect("hub state");
        let file = state.repos.get(repo).and_then(|r| r.files.get(path));
        file.map_or(0, |f| f.bytes.len() as u64)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("hub state").log.clone()
    }

    /// Stops serving: the port refuses connections from now on.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag and drops the listener.
        let _ = TcpStream::connect(self.address.trim_start_matches("http://"));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// One parsed request.
struct HttpRequest {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

fn read_request(stream: &TcpStream) -> Option<HttpRequest> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let path = target.split('?').next().unwrap_or_default().to_string();
    Some(HttpRequest {
        method,
        path,
        headers,
    })
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !headers.iter().any(|(n, _)| n == "Content-Length") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

fn json_response(stream: &mut TcpStream, body: &serde_json::Value) {
    let headers = [("Content-Type".to_string(), "application/json".to_string())];
    respond(stream, "200 OK", &headers, body.to_string().as_bytes());
}

fn error_response(stream: &mut TcpStream, status: &str, code: &str, message: &str) {
    let headers = [
        ("X-Error-Code".to_string(), code.to_string()),
        ("X-Error-Message".to_string(), message.to_string()),
        ("Content-Type".to_string(), "application/json".to_string()),
    ];
    let body = serde_json::json!({ "error": message }).to_string();
    respond(stream, status, &headers, body.as_bytes());
}

/// A 404 with the hub's error code.
fn not_found(stream: &mut TcpStream, code: &str, message: &str) {
    error_response(stream, "404 Not Found", code, message);
}

/// Splits `org/name/rest...` into the repository and the rest.
fn split_repo(path: &str) -> Option<(String, &str)> {
    let mut parts = path.splitn(3, '/');
    let org = parts.next()?;
    let name = parts.next()?;
    Some((format!("{org}/{name}"), parts.next().unwrap_or_default()))
}

fn serve(mut stream: TcpStream, state: &Mutex<HubState>) {
    let Some(request) = read_request(&stream) else {
        return;
    };
    let range = request.headers.get("range").cloned().unwrap_or_default();
    let mut state = state.lock().expect("hub state");
    let auth = if request.headers.contains_key("authorization") {
        " auth"
    } else {
        ""
    };
    state
        .log
        .push(format!("{} {} {range}{auth}", request.method, request.path));
    let authorized = |state: &HubState| {
        let sent = request.headers.get("authorization");
        match (&state.token, sent) {
            (Some(token), Some(sent)) if *sent == format!("Bearer {token}") => Ok(()),
            (_, Some(_)) => Err((
                "403 Forbidden",
                "Access to this gated repository is restricted",
            )),
            (_, None) => Err(("401 Unauthorized", "You must be authenticated to access it")),
        }
    };
    if let Some(api) = request.path.strip_prefix("/api/models/") {
        let Some((repo, rest)) = split_repo(api) else {
            return error_response(&mut stream, "400 Bad Request", "BadRequest", "bad path");
        };
        let Some(served) = state.repos.get(&repo) else {
            return not_found(&mut stream, "RepoNotFound", "Repository not found");
        };
        if let Some(revision) = rest.strip_prefix("revision/") {
            if revision != "main" && revision != served.commit {
                return not_found(&mut stream, "RevisionNotFound", "Invalid rev id");
            }
            let siblings: Vec<serde_json::Value> = served
                .files
                .keys()
                .map(|p| serde_json::json!({ "rfilename": p }))
                .collect();
            let gated = if served.gated {
                serde_json::json!("manual")
            } else {
                serde_json::json!(false)
            };
            let body = serde_json::json!({
                "_id": "0",
                "id": repo,
                "sha": served.commit,
                "gated": gated,
                "private": false,
                "siblings": siblings,
            });
            return json_response(&mut stream, &body);
        }
        if rest.starts_with("tree/") {
            let mut entries = Vec::new();
            let mut folders: Vec<String> = Vec::new();
            for (path, file) in &served.files {
                if let Some((folder, _)) = path.rsplit_once('/') {
                    if !folders.iter().any(|f| f == folder) {
                        folders.push(folder.to_string());
                        entries.push(serde_json::json!({ "type": "directory", "oid": "0", "size": 0, "path": folder }));
                    }
                }
                let listed = state.listed_oids.get(&(repo.clone(), path.clone()));
                let mut entry = serde_json::json!({
                    "type": "file",
                    "oid": listed.map_or(&file.sha256[..40], |o| o.as_str()),
                    "size": file.bytes.len(),
                    "path": path,
                });
                if file.lfs {
                    entry["lfs"] = serde_json::json!({
                        "oid": listed.unwrap_or(&file.sha256),
                        "size": file.bytes.len(),
                        "pointerSize": 134,
                    });
                }
                entries.push(entry);
            }
            let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
            if let Some(next) = &state.next_page {
                headers.push(("Link".to_string(), format!("<{next}>; rel=\"next\"")));
            }
            let body = serde_json::Value::Array(entries).to_string();
            return respond(&mut stream, "200 OK", &headers, body.as_bytes());
        }
        return not_found(&mut stream, "NotFound", "no such endpoint");
    }
    // /{org}/{name}/resolve/{revision}/{path}
    let Some((repo, rest)) = split_repo(request.path.trim_start_matches('/')) else {
        return not_found(&mut stream, "NotFound", "no such page");
    };
    let Some(rest) = rest.strip_prefix("resolve/") else {
        return not_found(&mut stream, "NotFound", "no such page");
    };
    let Some((revision, path)) = rest.split_once('/') else {
        return not_found(&mut stream, "NotFound", "no such page");
    };
    let Some(served) = state.repos.get(&repo) else {
        return not_found(&mut stream, "RepoNotFound", "Repository not found");
    };
    if served.gated {
        if let Err((status, message)) = authorized(&state) {
            return error_response(&mut stream, status, "GatedRepo", message);
        }
    }
    let Some(served) = state.repos.get(&repo) else {
        return;
    };
    if revision != "main" && revision != served.commit {
        return not_found(&mut stream, "RevisionNotFound", "Invalid rev id");
    }
    let Some(file) = served.files.get(path) else {
        return not_found(&mut stream, "EntryNotFound", "Entry not found");
    };
    if let Some(base) = &state.redirect_files {
        let location = format!("{base}{}", request.path);
        let headers = [("Location".to_string(), location)];
        return respond(&mut stream, "302 Found", &headers, &[]);
    }
    let total = file.bytes.len();
    let mut headers = vec![
        ("X-Repo-Commit".to_string(), served.commit.clone()),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
    ];
    if file.lfs {
        headers.push(("ETag".to_string(), format!("\"{}\"", file.sha256)));
        // The hub sends the whole file's size with every answer, ranged ones included.
        headers.push(("X-Linked-Etag".to_string(), format!("\"{}\"", file.sha256)));
        headers.push(("X-Linked-Size".to_string(), total.to_string()));
    } else {
        headers.push(("ETag".to_string(), format!("\"{}\"", &file.sha256[..40])));
    }
    let (start, end) = parse_range(&range, total);
    let body = file.bytes[start..end].to_vec();
    let status = if range.is_empty() {
        "200 OK"
    } else {
        "206 Partial Content"
    };
    if !range.is_empty() {
        headers.push((
            "Content-Range".to_string(),
            format!("bytes {start}-{}/{total}", end.saturating_sub(1)),
        ));
    }
    headers.push(("Content-Length".to_string(), body.len().to_string()));
    if request.method == "HEAD" {
        return respond(&mut stream, status, &headers, &[]);
    }
    let cut = match &state.cut {
        Some((cut_repo, cut_path, bytes)) if *cut_repo == repo && cut_path == path => Some(*bytes),
        _ => None,
    };
    if cut.is_some() {
        state.cut = None;
    }
    if let Some(bytes) = cut.or(state.cut_every) {
        drop(state);
        let kept = bytes.min(body.len());
        let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for (name, value) in &headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body[..kept]);
        let _ = stream.flush();
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
    let pause = state.pause_per_chunk;
    drop(state);
    match pause {
        None => respond(&mut stream, status, &headers, &body),
        Some(pause) => {
            respond(&mut stream, status, &headers, &[]);
            for chunk in body.chunks(64 << 10) {
                if stream.write_all(chunk).is_err() {
                    return;
                }
                let _ = stream.flush();
                std::thread::sleep(pause);
            }
        }
    }
}

/// `bytes=START-` or `bytes=START-END` (inclusive) as a half-open range within `total`.
fn parse_range(range: &str, total: usize) -> (usize, usize) {
    let Some(spec) = range.strip_prefix("bytes=") else {
        return (0, total);
    };
    let (start, end) = spec.split_once('-').unwrap_or((spec, ""));
    let start = start.parse().unwrap_or(0).min(total);
    let end = end.parse::<usize>().map_or(total, |e| (e + 1).min(total));
    (start, end.max(start))
}
