//! Replacing a file whole or not at all: results, the session, settings, masks, refs and
//! links all go through here. The content is written to a temporary file in the target's
//! folder (so the rename cannot cross file systems), flushed to disk, then renamed over the
//! target; on any failure the temporary file is removed and the old target is untouched.

use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Writes what `write` produces to `path`, atomically. A missing folder is an error (the
/// caller decides whether folders may be created).
pub fn write_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    write_file(path, Replace::Yes, write)
}

/// Like `write_with`, for a file that must be new: when `path` exists (another writer took
/// the name first) it is left alone and the error is `AlreadyExists`.
pub fn write_new_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    write_file(path, Replace::No, write)
}

/// Whether an existing target is replaced.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replace {
    Yes,
    No,
}

fn write_file(
    path: &Path,
    replace: Replace,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let prefix = format!(".{}.", name.to_string_lossy());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Readable as an ordinary file (the umask still applies), not tempfile's 0600.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    // Dropping the temporary file on any early return removes it.
    let temporary = builder.tempfile_in(folder)?;
    let mut writer = BufWriter::new(temporary);
    write(&mut writer)?;
    let temporary = writer
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    temporary.as_file().sync_all()?;
    match replace {
        Replace::Yes => temporary.persist(path).map_err(|e| e.error)?,
        Replace::No => temporary.persist_noclobber(path).map_err(|e| e.error)?,
    };
    Ok(())
}

/// Writes `bytes` to `path`, atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, |out| out.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names in `folder` other than `keep`.
    fn others(folder: &Path, keep: &str) -> Vec<String> {
        std::fs::read_dir(folder)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name != keep)
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_nothing_beside_it() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("session.json");
        std::fs::write(&path, b"old")?;
        write_bytes(&path, b"new")?;
        assert_eq!(std::fs::read(&path)?, b"new");
        assert!(others(dir.path(), "session.json").is_empty());
        Ok(())
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary_one() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("result.png");
        std::fs::write(&path, b"earlier result")?;
        let failed = write_with(&path, |out| {
            out.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path)?, b"earlier result");
        assert!(others(dir.path(), "result.png").is_empty());
        Ok(())
    }

    #[test]
    fn a_new_file_never_replaces_one_that_exists() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("00001-7.png");
        std::fs::write(&path, b"earlier result")?;
        let error = write_new_with(&path, |out| out.write_all(b"new"))
            .err()
            .map(|e| e.kind());
        assert_eq!(error, Some(io::ErrorKind::AlreadyExists));
        assert_eq!(std::fs::read(&path)?, b"earlier result");
        assert!(others(dir.path(), "00001-7.png").is_empty());
        Ok(())
    }

    #[test]
    fn a_missing_folder_is_an_error_not_a_stray_file() {
        let dir = tempfile::tempdir().ok();
        let path = dir.map_or_else(
            || Path::new("/nonexistent/x/y.png").to_path_buf(),
            |d| d.path().join("missing/y.png"),
        );
        assert!(write_bytes(&path, b"x").is_err());
    }
}
