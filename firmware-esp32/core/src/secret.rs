//! A string that must never be logged (API keys, device JWTs): the one redacting type
//! the core and both shells use.

use std::fmt;

/// Holds a credential. It has no `Display` and a redacting `Debug`, so a `{:?}` of a
/// struct holding one, or an error message built from it, cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The raw value, for the one place that puts it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("fwk_supersecret");
        assert!(!format!("{s:?}").contains("supersecret"));
        assert_eq!(s.expose(), "fwk_supersecret");
    }
}
