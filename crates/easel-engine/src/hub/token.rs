//! The hub access token, found where the Python client looks for it and never printed.

use std::path::PathBuf;

/// A hub access token. Its `Debug` hides it, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct HubToken(String);

impl std::fmt::Debug for HubToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubToken(<hidden>)")
    }
}

impl HubToken {
    /// A token given directly.
    pub fn new(token: impl Into<String>) -> Option<Self> {
        let token = token.into().trim().to_string();
        (!token.is_empty()).then_some(Self(token))
    }

    /// The token as the Python client finds it: `HF_TOKEN`, the file `HF_TOKEN_PATH` names,
    /// or `token` in the hub home (`HF_HOME`, else `~/.cache/huggingface`).
    pub fn from_environment() -> Option<Self> {
        if std::env::var_os("HF_HUB_DISABLE_IMPLICIT_TOKEN").is_some_and(|v| !v.is_empty()) {
            return None;
        }
        if let Some(token) = std::env::var("HF_TOKEN").ok().and_then(Self::new) {
            return Some(token);
        }
        let file = std::env::var_os("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_hub::hf_home().join("token"));
        std::fs::read_to_string(file).ok().and_then(Self::new)
    }

    /// The secret, for the client only.
    pub(super) fn secret(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the token replaced.
    pub fn redact(&self, text: &str) -> String {
        text.replace(&self.0, "<token>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_shows_in_debug_or_redacted_text() {
        let token = HubToken::new(" hf_secret123 \n");
        assert!(token.as_ref().is_some_and(|t| t.secret() == "hf_secret123"));
        let shown = format!("{token:?}");
        assert!(!shown.contains("hf_secret123"), "{shown}");
        let redacted = token.map(|t| t.redact("Bearer hf_secret123 refused"));
        assert_eq!(redacted.as_deref(), Some("Bearer <token> refused"));
        assert!(HubToken::new("  ").is_none());
    }
}
