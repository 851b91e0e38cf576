//! `HubError`: what can go wrong finding or fetching a model, each with what to do. No
//! message ever holds the access token.

use std::path::PathBuf;

/// A failure to find, fetch or place a model's files.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Nothing in the catalog or on disk goes by that name.
    #[error("no model called '{name}' in the catalog: `easel models` lists them, or give a hub repository as org/name")]
    UnknownModel {
        /// What was asked for.
        name: String,
    },
    /// The model is not in any cache and nothing may be fetched now.
    #[error("{model} is not downloaded yet: run `easel download {id}` (or Download in the Models window) while online, then try again")]
    NotDownloaded {
        /// Its display name.
        model: String,
        /// What to pass to `easel download`.
        id: String,
    },
    /// The hub could not be reached.
    #[error("could not reach the Hugging Face Hub at {endpoint} ({message}); check the connection (or HF_ENDPOINT). Downloaded models still work offline")]
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// What the connection said.
        message: String,
    },
    /// A gated repository was asked for without a token.
    #[error("{repo} is gated: accept its licence at {endpoint}/{repo} while signed in, then set HF_TOKEN (or run `hf auth login`) and download again")]
    GatedWithoutToken {
        /// The repository.
        repo: String,
        /// The hub it is on.
        endpoint: String,
    },
    /// The hub refused the token for a repository.
    #[error("the hub refused access to {repo} with your token: accept the licence at {endpoint}/{repo} with the account the token belongs to (or check that the token is valid), then download again")]
    Refused {
        /// The repository.
        repo: String,
        /// The hub it is on.
        endpoint: String,
    },
    /// The repository or revision does not exist.
    #[error("the hub has no repository {repo} at revision '{revision}': check the name")]
    RepoNotFound {
        /// The repository.
        repo: String,
        /// The revision asked for.
        revision: String,
    },
    /// A file the model needs is not in the repository.
    #[error("{repo} has no file {path}: the repository changed or is not a layout Easel reads")]
    FileNotInRepo {
        /// The repository.
        repo: String,
        /// The missing path.
        path: String,
    },
    /// The connection kept failing part way through a file.
    #[error("downloading {path} from {repo} stopped at {done_bytes} of {total_bytes} bytes ({message}); what arrived is kept: run the download again to resume")]
    Interrupted {
        /// The repository.
        repo: String,
        /// The file.
        path: String,
        /// Bytes kept.
        done_bytes: u64,
        /// The file's size.
        total_bytes: u64,
        /// The last error.
        message: String,
    },
    /// A file arrived with the wrong content twice.
    #[error("{path} from {repo} arrived damaged twice (expected sha256 {expected}, got {actual}); it was removed: try again later")]
    Damaged {
        /// The repository.
        repo: String,
        /// The file.
        path: String,
        /// The hash the hub lists.
        expected: String,
        /// The hash of what arrived.
        actual: String,
    },
    /// The download was cancelled; finished files and the partial one are kept.
    #[error("download cancelled; what arrived is kept and the next download resumes from there")]
    Cancelled,
    /// Writing to the models folder failed.
    #[error("could not write {path}: {source}; check free disk space and that the models folder is writable")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Any other answer from the hub.
    #[error("the hub answered unexpectedly for {repo}: {message}")]
    Hub {
        /// The repository.
        repo: String,
        /// What the client said.
        message: String,
    },
}

impl HubError {
    /// A write failure at `path`.
    pub fn write(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> HubError {
        let path = path.into();
        move |source| HubError::Write { path, source }
    }
}
