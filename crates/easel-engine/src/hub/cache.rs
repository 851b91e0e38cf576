//! The Hugging Face cache layout on disk, read and written without any network:
//! `models--org--name/blobs/<id>`, `snapshots/<commit>/<path>` (links to blobs) and
//! `refs/<revision>` (the commit a branch pointed at when it was fetched).

use std::io;
use std::path::{Path, PathBuf};

/// The cache folders searched for a model, Easel's own first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRoots {
    /// Easel's models folder: where downloads land.
    pub models_dir: PathBuf,
    /// The user's own Hugging Face cache, searched after Easel's, never written to.
    pub user_hub_cache: Option<PathBuf>,
}

impl CacheRoots {
    /// Easel's `models_dir` and the user's hub cache as the Python client finds it
    /// (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`).
    pub fn with_user_cache(models_dir: impl Into<PathBuf>) -> Self {
        Self {
            models_dir: models_dir.into(),
            user_hub_cache: Some(hf_hub::resolve_cache_dir()),
        }
    }

    /// Only Easel's `models_dir` (tests, and users who want nothing shared).
    pub fn only(models_dir: impl Into<PathBuf>) -> Self {
        Self {
            models_dir: models_dir.into(),
            user_hub_cache: None,
        }
    }

    /// Every root, Easel's first, without duplicates.
    pub fn all(&self) -> Vec<&Path> {
        let mut roots = vec![self.models_dir.as_path()];
        if let Some(user) = &self.user_hub_cache {
            if !same_folder(user, &self.models_dir) {
                roots.push(user.as_path());
            }
        }
        roots
    }
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// One repository's folder inside one cache root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFolder {
    /// `root/models--org--name`.
    pub dir: PathBuf,
}

impl RepoFolder {
    /// The folder of model repo `repo_id` (`org/name`) under `root`.
    pub fn new(root: &Path, repo_id: &str) -> Self {
        let name = format!("models--{}", repo_id.replace('/', "--"));
        Self {
            dir: root.join(name),
        }
    }

    /// Where a file's content lives, named by its blob id (sha256 for LFS files, else the
    /// git object id).
    pub fn blob_path(&self, blob_id: &str) -> PathBuf {
        self.dir.join("blobs").join(blob_id)
    }

    /// A blob still being downloaded.
    pub fn incomplete_path(&self, blob_id: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{blob_id}.incomplete"))
    }

    /// The lock a download of this blob holds, as the Python client keeps them:
    /// `root/.locks/models--org--name/<id>.lock`.
    pub fn lock_path(&self, blob_id: &str) -> PathBuf {
        let root = self.dir.parent().unwrap_or_else(|| Path::new("."));
        let name = self.dir.file_name().unwrap_or_default();
        root.join(".locks")
            .join(name)
            .join(format!("{blob_id}.lock"))
    }

    /// The snapshot folder of `commit`.
    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    /// The commit `revision` resolved to when last fetched: the revision itself when it is
    /// a commit hash, else what `refs/<revision>` says.
    pub fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        let commit = text.trim();
        is_commit_hash(commit).then(|| commit.to_string())
    }

    /// Records that `revision` points at `commit`.
    pub fn write_ref(&self, revision: &str, commit: &str) -> io::Result<()> {
        if is_commit_hash(revision) {
            return Ok(());
        }
        let path = self.dir.join("refs").join(revision);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        crate::atomic_file::write_bytes(&path, commit.as_bytes())
    }

    /// The snapshot of `revision` if it holds every one of `paths` (as readable files).
    pub fn snapshot_with(&self, revision: &str, paths: &[&str]) -> Option<PathBuf> {
        let snapshot = self.snapshot_dir(&self.commit_of(revision)?);
        paths
            .iter()
            .all(|path| snapshot.join(path).is_file())
            .then_some(snapshot)
    }

    /// Points `snapshots/<commit>/<path>` at the blob (a relative link, as the hub client
    /// makes it, so the cache can move).
    pub fn link_snapshot_file(&self, commit: &str, path: &str, blob_id: &str) -> io::Result<()> {
        let link = self.snapshot_dir(commit).join(path);
        let depth = path.split('/').count() + 1; // up from the file's folder to the repo folder
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob_id);
        link_file(&target, &link)
    }
}

/// Whether `revision` is a full 40-hex-digit commit hash.
pub fn is_commit_hash(revision: &str) -> bool {
    is_hex_of_length(revision, 40)
}

/// Whether `text` is `length` hexadecimal digits: the only form of a hub's ids (commits and
/// git object ids 40, sha256 64) that may become a file name.
pub fn is_hex_of_length(text: &str, length: usize) -> bool {
    text.len() == length && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Makes `link` point at `target` (relative to the link's folder), replacing what was there.
/// A symbolic link where the platform has them; a copy elsewhere.
pub fn link_file(target: &Path, link: &Path) -> io::Result<()> {
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    #[cfg(unix)]
    {
        // Made beside the link and renamed over it, so the link is never missing: a reader
        // sees the old target or the new one.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = link
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let serial = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temporary =
            link.with_file_name(format!(".{name}.{}.{serial}.link", std::process::id()));
        std::fs::remove_file(&temporary).ok();
        std::os::unix::fs::symlink(target, &temporary)?;
        std::fs::rename(&temporary, link).inspect_err(|_| {
            std::fs::remove_file(&temporary).ok();
        })
    }
    #[cfg(not(unix))]
    {
        let resolved = link
            .parent()
            .map_or_else(|| target.to_path_buf(), |p| p.join(target));
        let bytes = std::fs::read(resolved)?;
        crate::atomic_file::write_bytes(link, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_folders_follow_the_hub_naming() {
        let folder = RepoFolder::new(Path::new("/c"), "black-forest-labs/FLUX.1-dev");
        assert_eq!(
            folder.dir,
            PathBuf::from("/c/models--black-forest-labs--FLUX.1-dev")
        );
        assert_eq!(
            folder.snapshot_dir("abc"),
            PathBuf::from("/c/models--black-forest-labs--FLUX.1-dev/snapshots/abc")
        );
    }

    #[test]
    fn snapshot_links_resolve_to_blobs_and_refs_name_commits() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let folder = RepoFolder::new(root.path(), "org/model");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(folder.dir.join("blobs"))?;
        std::fs::write(folder.blob_path("b1"), b"weights")?;
        folder.link_snapshot_file(commit, "unet/model.safetensors", "b1")?;
        folder.write_ref("main", commit)?;
        assert_eq!(folder.commit_of("main").as_deref(), Some(commit));
        let snapshot = folder.snapshot_with("main", &["unet/model.safetensors"]);
        assert_eq!(snapshot, Some(folder.snapshot_dir(commit)));
        assert_eq!(
            std::fs::read(folder.snapshot_dir(commit).join("unet/model.safetensors"))?,
            b"weights"
        );
        assert_eq!(folder.snapshot_with("main", &["missing.json"]), None);
        assert_eq!(folder.commit_of("other"), None);
        Ok(())
    }
}
