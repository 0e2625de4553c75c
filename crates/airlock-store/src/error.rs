//! The store errors. Every variant names the store (`location`: a registry repository or a
//! folder) and what was asked of it, so a message is useful without further context.

use airlock_oci::{Digest, ManifestError};

/// A store result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to a store. Boxed, so a `Result` stays one pointer wide on the hot
/// paths; [`Error::kind`] tells the cases apart.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(Box<ErrorKind>);

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error(Box::new(kind))
    }
}

/// The cases of [`Error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The manifest, tag or blob does not exist.
    #[error("{what} not found in {location}")]
    NotFound {
        /// What was looked for, e.g. "manifest `v1`".
        what: String,
        /// The store.
        location: String,
    },
    /// The registry refused our credentials or has none for us.
    #[error("{action} {location}: {status} {reason}")]
    Denied {
        /// What was attempted, e.g. "pull from".
        action: String,
        /// The store.
        location: String,
        /// 401 or 403.
        status: u16,
        /// The registry's explanation, or ours.
        reason: String,
        /// The fix to print.
        hint: String,
    },
    /// Bytes did not hash to the digest they were asked by.
    #[error("digest mismatch for {expected} from {location}: the content hashes to {actual}")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of the bytes seen.
        actual: Digest,
        /// The store.
        location: String,
    },
    /// A blob had more or fewer bytes than its descriptor says.
    #[error("size mismatch for {digest} from {location}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The descriptor's size.
        expected: u64,
        /// The bytes seen.
        actual: u64,
        /// The store.
        location: String,
    },
    /// A digest whose algorithm airlock cannot compute.
    #[error("cannot verify {digest} in {location}: only sha256 and sha512 content can be verified")]
    UnsupportedDigest {
        /// The digest.
        digest: String,
        /// The store.
        location: String,
    },
    /// A name (a tag listed by a registry, a title) that is not valid where it was to be used:
    /// refused before it could become a path or a URL.
    #[error("refused the {what} `{name}` from {location}: not a valid {what} name")]
    InvalidName {
        /// What kind of name: "tag", "repository".
        what: String,
        /// The name, escaped for printing.
        name: String,
        /// The store.
        location: String,
    },
    /// The registry answered with an unexpected status.
    #[error("{method} {url}: {status}{}", describe_body(.code, .message))]
    Http {
        /// HTTP method.
        method: String,
        /// The URL (never with credentials).
        url: String,
        /// The status code.
        status: u16,
        /// The distribution-spec error code, if the body had one.
        code: Option<String>,
        /// The error message, if the body had one.
        message: Option<String>,
        /// Seconds the registry asked us to wait (`Retry-After`).
        retry_after: Option<std::time::Duration>,
    },
    /// The connection failed, timed out or was cut.
    #[error("{method} {url}: {}", transport_cause(.url, .source))]
    Transport {
        /// HTTP method.
        method: String,
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// A manifest could not be used.
    #[error("bad manifest `{reference}` in {location}")]
    Manifest {
        /// The tag or digest.
        reference: String,
        /// The store.
        location: String,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// A file of an image-layout folder could not be read or written.
    #[error("{action} `{path}`")]
    Io {
        /// What was attempted, e.g. "write blob".
        action: String,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file's content was not what the format requires.
    #[error("malformed {what} `{path}`: {reason}")]
    Malformed {
        /// What the file is, e.g. "image layout index".
        what: String,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Credentials could not be read or a helper failed.
    #[error("credentials for `{registry}`: {reason}")]
    Credentials {
        /// The registry.
        registry: String,
        /// What failed.
        reason: String,
    },
    /// The registry's protocol was violated (a missing header, an unparsable answer).
    #[error("{location}: {reason}")]
    Protocol {
        /// The store.
        location: String,
        /// What was wrong.
        reason: String,
    },
    /// An operation retried until the limit. The message is the last failure's, so that every
    /// place that prints only the top of an error (a run's reason, a watch log line) still
    /// says what went wrong, not only that airlock gave up.
    #[error("{last} (gave up after {attempts} attempt{})", if *.attempts == 1 { "" } else { "s" })]
    Retried {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Error,
    },
}

/// Why a connection failed, in words: the cases a user can act on are told apart.
fn transport_cause(url: &str, source: &reqwest::Error) -> String {
    let host = host_of(url);
    match connection_failure(source) {
        Some(ConnectionFailure::Refused) => format!("nothing listens on {host} (connection refused)"),
        Some(ConnectionFailure::NoSuchHost) => format!("cannot resolve the host name of {host}"),
        Some(ConnectionFailure::PlainHttp) => format!("{host} speaks plain HTTP, not HTTPS"),
        None if source.is_timeout() => "timed out: the registry sent nothing for longer than the read timeout (--read-timeout)".into(),
        None if source.is_body() || source.is_decode() => "the connection broke while reading the answer".into(),
        None => "connection failed".into(),
    }
}

/// `host[:port]` of a URL, for messages.
fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(|h| match u.port_or_known_default() {
            Some(port) => format!("{h}:{port}"),
            None => h.to_owned(),
        }))
        .unwrap_or_else(|| url.to_owned())
}

/// A connection that no retry will make work: fail at once, with the cause in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectionFailure {
    /// Nothing listens on the port.
    Refused,
    /// The host name does not resolve.
    NoSuchHost,
    /// A TLS handshake answered in plain HTTP.
    PlainHttp,
}

fn connection_failure(source: &reqwest::Error) -> Option<ConnectionFailure> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
    while let Some(error) = cause {
        if error.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return Some(ConnectionFailure::Refused);
        }
        let text = error.to_string();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            return Some(ConnectionFailure::NoSuchHost);
        }
        if text.contains("InvalidContentType") || text.contains("corrupt message") {
            return Some(ConnectionFailure::PlainHttp);
        }
        cause = error.source();
    }
    None
}

fn describe_body(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(code), Some(message)) => format!(" {code}: {message}"),
        (Some(code), None) => format!(" {code}"),
        (None, Some(message)) => format!(" {message}"),
        (None, None) => String::new(),
    }
}

impl Error {
    /// Which case this is.
    pub fn kind(&self) -> &ErrorKind {
        &self.0
    }

    /// Whether trying again may succeed: connection failures, 408, 429 and 5xx.
    pub fn is_transient(&self) -> bool {
        match self.kind() {
            // A certificate the TLS stack refused stays refused.
            // A port nobody listens on, a name that does not resolve, plain HTTP where TLS was
            // spoken: asking again changes nothing (fail fast, not after five attempts).
            ErrorKind::Transport { source, .. } => {
                !source.is_builder() && !source.is_redirect() && !chain_mentions(source, "certificate") && connection_failure(source).is_none()
            }
            ErrorKind::Http { status, .. } => matches!(status, 408 | 429 | 500..=599),
            _ => false,
        }
    }

    /// The delay the server asked for, if any.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self.kind() {
            ErrorKind::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether this is a "not found".
    pub fn is_not_found(&self) -> bool {
        matches!(self.kind(), ErrorKind::NotFound { .. })
    }

    /// Why a connection could not be made, in words, when no retry would help (nothing listens,
    /// no such host, plain HTTP where TLS was spoken): what a command's first line should say.
    pub fn connection_problem(&self) -> Option<String> {
        match self.kind() {
            ErrorKind::Transport { url, source, .. } if connection_failure(source).is_some() => Some(transport_cause(url, source)),
            ErrorKind::Retried { last, .. } => last.connection_problem(),
            _ => None,
        }
    }

    /// A fix to show the user, when one is known.
    pub fn hint(&self) -> Option<String> {
        match self.kind() {
            ErrorKind::Denied { hint, .. } => Some(hint.clone()),
            ErrorKind::Retried { last, .. } => last.hint(),
            ErrorKind::Http { status: 429, .. } => Some("the registry is rate limiting; lower the concurrency or try later".into()),
            ErrorKind::Http { status: 405, method, .. } if method == "DELETE" => Some(
                "the registry does not allow deletes; docker-registry needs `storage: {delete: {enabled: true}}` \
                 (or REGISTRY_STORAGE_DELETE_ENABLED=true), `airlock serve` allows them unless serve.yaml says `delete: false`"
                    .into(),
            ),
            ErrorKind::Transport { source, url, .. } if connection_failure(source) == Some(ConnectionFailure::PlainHttp) => {
                let host = host_of(url);
                Some(format!("speak plain HTTP to it with `--plain-http {host}` (or `plain_http: true` in the config file)"))
            }
            ErrorKind::Transport { source, .. } if connection_failure(source) == Some(ConnectionFailure::Refused) => {
                Some("is the registry running? check the host and the port".into())
            }
            ErrorKind::Transport { source, .. } if connection_failure(source) == Some(ConnectionFailure::NoSuchHost) => {
                Some("check the registry's host name (and the machine's DNS)".into())
            }
            ErrorKind::Transport { source, .. } if chain_mentions(source, "certificate") => {
                Some("the registry's certificate is not trusted; pass its CA with `--ca-cert FILE`".into())
            }
            ErrorKind::Transport { url, .. } if url.starts_with("https://") => {
                Some("is the registry reachable? a registry serving plain HTTP needs `--plain-http`".into())
            }
            _ => None,
        }
    }
}

/// Whether any error in the `source()` chain says `needle`; the TLS stack's errors have no
/// stable types to match on.
pub(crate) fn chain_mentions(error: &(dyn std::error::Error + 'static), needle: &str) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.to_string().contains(needle) {
            return true;
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fail(url: &str) -> Error {
        let client = reqwest::Client::builder().use_preconfigured_tls(crate::remote::tls::client_config(Vec::new())).build().unwrap();
        let source = client.get(url).send().await.unwrap_err();
        Error::from(ErrorKind::Transport { method: "GET".into(), url: url.to_owned(), source })
    }

    #[tokio::test]
    async fn connections_no_retry_can_fix_are_said_in_words_and_not_retried() {
        // A server that answers a TLS handshake in plain HTTP, as a registry without TLS does.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = [0u8; 1024];
                let _ = socket.read(&mut buffer).await;
                let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
            }
        });
        let error = fail(&format!("https://{plain}/v2/")).await;
        assert_eq!(error.connection_problem().as_deref(), Some(format!("{plain} speaks plain HTTP, not HTTPS").as_str()), "{error}");
        assert!(!error.is_transient());
        assert!(error.hint().unwrap().contains(&format!("--plain-http {plain}")), "{:?}", error.hint());
        // A port nobody listens on.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let error = fail(&format!("http://{closed}/v2/")).await;
        assert_eq!(error.connection_problem().as_deref(), Some(format!("nothing listens on {closed} (connection refused)").as_str()));
        assert!(!error.is_transient());
        // A reset is worth another try.
        let resetting = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let reset = resetting.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = resetting.accept().await {
                drop(socket);
            }
        });
        let error = fail(&format!("http://{reset}/v2/")).await;
        assert!(error.connection_problem().is_none() && error.is_transient(), "{error}");
    }
}
