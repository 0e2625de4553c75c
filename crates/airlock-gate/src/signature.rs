//! The `signature` gate: a cosign signature by a configured key on the upstream image.
//!
//! cosign stores signatures beside the image, under the tag `sha256-<hex>.sig`: a manifest
//! whose layers are "simple signing" payloads (JSON naming the signed manifest digest), each
//! with its ECDSA signature, base64, in the annotation `dev.cosignproject.cosign/signature`.
//! A payload counts when its digest checks out, it names the upstream digest, and the key
//! verifies its signature. Keys are PEM public keys of ECDSA P-256 (cosign's default).

use std::path::Path;

use airlock_oci::Digest;
use airlock_store::{ErrorKind, Store};
use base64::Engine as _;

const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Payloads are small JSON documents; anything bigger is refused unread.
const PAYLOAD_LIMIT: u64 = 1024 * 1024;

/// The DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1, 65-byte point).
const P256_SPKI_PREFIX: [u8; 26] =
    [0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00];

/// The signature tag cosign uses for `digest`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("{}-{}.sig", digest.algorithm(), digest.digest())
}

/// Reads a PEM `PUBLIC KEY` of ECDSA P-256 into its uncompressed point.
pub fn load_key(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the public key `{}`: {e}", path.display()))?;
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PUBLIC KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| format!("`{}` is not a PEM public key (-----BEGIN PUBLIC KEY-----)", path.display()))?;
    if der.len() != P256_SPKI_PREFIX.len() + 65 || der[..P256_SPKI_PREFIX.len()] != P256_SPKI_PREFIX {
        return Err(format!("`{}` is not an ECDSA P-256 public key, the kind `cosign generate-key-pair` writes", path.display()));
    }
    Ok(der[P256_SPKI_PREFIX.len()..].to_vec())
}

/// Why a signature check did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The image is unsigned or its signatures do not verify: the digest is refused.
    Refused(String),
    /// The check could not be made (the key unreadable, the registry unreachable): nothing is
    /// known about the image.
    CannotCheck(String),
}

/// Verifies that `upstream` carries a signature of `digest` by `key`; the log says which
/// signature matched, the error why none did or why none could be checked.
pub async fn verify(upstream: &dyn Store, digest: &Digest, key: &Path) -> Result<String, Refusal> {
    let point = load_key(key).map_err(Refusal::CannotCheck)?;
    let public_key = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &point);
    let tag = signature_tag(digest);
    let manifest = match upstream.get_manifest(&tag).await {
        Ok(manifest) => manifest,
        Err(e) if e.is_not_found() => return Err(Refusal::Refused(format!("unsigned: {upstream} has no signature tag `{tag}` for {digest}"))),
        Err(e) => return Err(Refusal::CannotCheck(format!("cannot read the signature `{tag}` from {upstream}: {e}"))),
    };
    let parsed: serde_json::Value =
        serde_json::from_slice(manifest.bytes()).map_err(|e| Refusal::Refused(format!("the signature manifest `{tag}` is not JSON: {e}")))?;
    let layers = parsed["layers"].as_array().cloned().unwrap_or_default();
    let mut reasons = Vec::new();
    for layer in &layers {
        let Some(signature) = layer["annotations"][SIGNATURE_ANNOTATION].as_str() else { continue };
        if layer["mediaType"].as_str() != Some(SIMPLE_SIGNING) {
            continue;
        }
        let descriptor: airlock_oci::Descriptor = match serde_json::from_value(layer.clone()) {
            Ok(d) => d,
            Err(e) => {
                reasons.push(format!("a layer descriptor is malformed: {e}"));
                continue;
            }
        };
        let payload = match airlock_store::verify::read_small(upstream, &descriptor, PAYLOAD_LIMIT).await {
            Ok(payload) => payload,
            // Unreachable is not unsigned: only content seen and found wanting refuses.
            Err(e) if matches!(e.kind(), ErrorKind::Transport { .. } | ErrorKind::Http { .. } | ErrorKind::Denied { .. }) => {
                return Err(Refusal::CannotCheck(format!("cannot read the signature payload {} from {upstream}: {e}", descriptor.digest())));
            }
            Err(e) => {
                reasons.push(format!("payload {}: {e}", descriptor.digest()));
                continue;
            }
        };
        let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
            reasons.push(format!("payload {}: the signature is not base64", descriptor.digest()));
            continue;
        };
        if public_key.verify(&payload, &signature).is_err() {
            reasons.push(format!("payload {}: the signature does not verify with `{}`", descriptor.digest(), key.display()));
            continue;
        }
        let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
        let signed = claims["critical"]["image"]["docker-manifest-digest"].as_str().unwrap_or("");
        if signed != digest.to_string() {
            reasons.push(format!("payload {}: signed for `{signed}`, not {digest}", descriptor.digest()));
            continue;
        }
        let identity = claims["critical"]["identity"]["docker-reference"].as_str().unwrap_or("");
        return Ok(format!("signature `{tag}` verified with `{}`: {digest} signed for `{identity}`\n", key.display()));
    }
    if reasons.is_empty() {
        reasons.push(format!("`{tag}` holds no cosign signature layer"));
    }
    Err(Refusal::Refused(format!("no valid signature of {digest} by `{}`: {}", key.display(), reasons.join("; "))))
}
