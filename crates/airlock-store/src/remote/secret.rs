//! Secrets that cannot leak by accident: `Debug` and `Display` print `******`.

use std::fmt;

/// A password, token or identity token. Read it with [`Secret::expose`], only where it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("******")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("******")
    }
}

/// A URL fit for logs: scheme, host and port kept, the path and query (where webhook URLs carry
/// their tokens) shown as `******`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = rest.split_once(['/', '?']).map(|(a, p)| (a, !p.is_empty())).unwrap_or((rest, false));
    // Credentials in the authority (`user:pass@host`) go too.
    let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let prefix = if scheme.is_empty() { String::new() } else { format!("{scheme}://") };
    if path {
        format!("{prefix}{host}/******")
    } else {
        format!("{prefix}{host}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_lose_their_paths_and_userinfo() {
        assert_eq!(super::redact_url("https://hooks.example.com/services/T000/B000/XXXX"), "https://hooks.example.com/******");
        assert_eq!(super::redact_url("http://user:pw@127.0.0.1:8080/events?token=x"), "http://127.0.0.1:8080/******");
        assert_eq!(super::redact_url("http://127.0.0.1:9"), "http://127.0.0.1:9");
    }

    #[test]
    fn never_printed() {
        let secret = super::Secret::new("hunter2");
        assert_eq!(format!("{secret} {secret:?} {:?}", Some(&secret)), "****** ****** Some(******)");
    }
}
