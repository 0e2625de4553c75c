//! Content digests: parsing restricted to the algorithms airlock can verify, and hashing in flight.

use std::str::FromStr;

use oci_spec::image::{Digest, DigestAlgorithm};
use sha2::Digest as _;

/// Why a digest string was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid digest `{input}`: {reason}")]
pub struct DigestError {
    /// The text as given.
    pub input: String,
    /// What is wrong in it.
    pub reason: String,
}

/// Parses `sha256:<64 hex>` or `sha512:<128 hex>`.
///
/// Other algorithms are syntactically valid OCI digests, but airlock refuses them: content it
/// cannot hash is content it cannot verify.
pub fn parse_digest(input: &str) -> Result<Digest, DigestError> {
    let error = |reason: &str| DigestError { input: input.to_owned(), reason: reason.to_owned() };
    let Some((algorithm, hex)) = input.split_once(':') else {
        return Err(error("expected `sha256:<64 hex digits>`"));
    };
    let expected_len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(error("only sha256 and sha512 digests are supported")),
    };
    if hex.len() != expected_len {
        return Err(error(&format!("a {algorithm} digest has {expected_len} hex digits, this one has {}", hex.len())));
    }
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(error("the hex part must be lowercase hexadecimal"));
    }
    Digest::from_str(input).map_err(|e| error(&e.to_string()))
}

/// Hashes a byte stream chunk by chunk with the algorithm of the digest it is checked against.
#[derive(Clone)]
pub enum DigestHasher {
    /// SHA-256.
    Sha256(sha2::Sha256),
    /// SHA-512.
    Sha512(sha2::Sha512),
}

impl DigestHasher {
    /// A hasher for `algorithm`; `None` for algorithms airlock cannot verify.
    pub fn new(algorithm: &DigestAlgorithm) -> Option<Self> {
        match algorithm {
            DigestAlgorithm::Sha256 => Some(Self::Sha256(sha2::Sha256::new())),
            DigestAlgorithm::Sha512 => Some(Self::Sha512(sha2::Sha512::new())),
            _ => None,
        }
    }

    /// A SHA-256 hasher, the default for new content.
    pub fn sha256() -> Self {
        Self::Sha256(sha2::Sha256::new())
    }

    /// Feeds a chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(chunk),
            Self::Sha512(h) => h.update(chunk),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let text = match self {
            Self::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Self::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        };
        Digest::from_str(&text).expect("a freshly computed digest is well formed")
    }
}

/// The digest of `bytes` with the same algorithm as `like` (sha256 when `like` cannot be hashed).
pub fn digest_of(bytes: &[u8], like: Option<&Digest>) -> Digest {
    let mut hasher = like.and_then(|d| DigestHasher::new(d.algorithm())).unwrap_or_else(DigestHasher::sha256);
    hasher.update(bytes);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_empty_is_the_well_known_value() {
        assert_eq!(
            digest_of(b"", None).to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn sha512_is_kept_when_asked_for() {
        let like = parse_digest(&format!("sha512:{}", "0".repeat(128))).unwrap();
        assert!(digest_of(b"abc", Some(&like)).to_string().starts_with("sha512:ddaf35a1"));
    }

    #[test]
    fn bad_digests_say_why() {
        let check = |input: &str, reason: &str| {
            let err = parse_digest(input).unwrap_err().to_string();
            assert!(err.contains(reason), "{err}");
        };
        check("sha256:abc", "has 64 hex digits, this one has 3");
        check("md5:abc", "only sha256 and sha512");
        check("nocolon", "expected `sha256:");
        check(&format!("sha256:{}", "A".repeat(64)), "lowercase");
    }
}
