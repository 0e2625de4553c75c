//! The TLS client configuration every airlock HTTP client uses: the system's roots plus
//! `--ca-cert` files, read on the first TLS handshake rather than when a client is built.
//!
//! Why lazily: reading the system certificate store (hundreds of files under `/etc/ssl/certs`)
//! takes about 6 ms of CPU, as much as a warm sync of 40 tags spends on everything else, and a
//! command that only speaks plain HTTP to a loopback registry never needs it.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A client configuration trusting the system roots and `extra`, loaded on first use.
pub fn client_config(extra: Vec<CertificateDer<'static>>) -> rustls::ClientConfig {
    client_config_with(extra, Vec::new())
}

/// [`client_config`], and for the hosts in `unverified` (names or addresses, no port; `*` for
/// every host) any
/// certificate is taken: `--tls-verify=false`, for people who must (the handshake is still
/// checked, so the connection is encrypted, but to whoever answers).
pub fn client_config_with(extra: Vec<CertificateDer<'static>>, unverified: Vec<String>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(LazyRoots { extra, unverified, provider: provider.clone(), verifier: OnceLock::new(), per_host: Default::default() });
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

fn is_ca_used_as_end_entity(error: &rustls::Error) -> bool {
    matches!(error, rustls::Error::InvalidCertificate(CertificateError::Other(other)) if format!("{other:?}").contains("CaUsedAsEndEntity"))
}

/// Parses every certificate of a PEM bundle.
pub fn parse_pem_bundle(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let certificates = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    if certificates.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certificates)
}

/// WebPKI verification against roots read on the first certificate to check; signatures of
/// the handshake itself need no roots and are checked straight away.
#[derive(Debug)]
struct LazyRoots {
    extra: Vec<CertificateDer<'static>>,
    unverified: Vec<String>,
    provider: Arc<CryptoProvider>,
    verifier: OnceLock<Option<Arc<WebPkiServerVerifier>>>,
    /// Per host, a verifier over the CAs of its `certs.d` folders (`None`: it has none).
    per_host: std::sync::Mutex<std::collections::HashMap<String, Option<Arc<WebPkiServerVerifier>>>>,
}

/// The `certs.d` folders of Docker and of containers (podman, skopeo, buildah): in each, a
/// folder per registry (`HOST` or `HOST:PORT`) holds that registry's CA certificates (`*.crt`).
fn certs_d_folders() -> Vec<std::path::PathBuf> {
    let mut folders = vec![std::path::PathBuf::from("/etc/containers/certs.d"), std::path::PathBuf::from("/etc/docker/certs.d")];
    if let Some(home) = std::env::var_os("HOME") {
        folders.insert(0, std::path::Path::new(&home).join(".config/containers/certs.d"));
    }
    folders
}

/// The CA certificates the `certs.d` folders hold for `host` (any port).
fn certs_d_for(host: &str, folders: &[std::path::PathBuf]) -> Vec<CertificateDer<'static>> {
    let mut certificates = Vec::new();
    for folder in folders {
        let Ok(entries) = std::fs::read_dir(folder) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let matches = name == host || name.strip_prefix(host).is_some_and(|rest| rest.starts_with(':'));
            if !matches {
                continue;
            }
            let Ok(files) = std::fs::read_dir(entry.path()) else { continue };
            for file in files.flatten() {
                if file.path().extension().is_some_and(|e| e == "crt") {
                    if let Ok(pem) = std::fs::read(file.path()) {
                        certificates.extend(parse_pem_bundle(&pem).unwrap_or_default());
                    }
                }
            }
        }
    }
    certificates
}

impl LazyRoots {
    /// A verifier over the CAs `certs.d` holds for `host`, made once per host.
    fn certs_d_verifier(&self, host: &str) -> Option<Arc<WebPkiServerVerifier>> {
        let mut cache = self.per_host.lock().expect("per-host verifier lock");
        cache
            .entry(host.to_owned())
            .or_insert_with(|| {
                let certificates = certs_d_for(host, &certs_d_folders());
                if certificates.is_empty() {
                    return None;
                }
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(certificates);
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone()).build().ok()
            })
            .clone()
    }

    /// `None` when no root at all could be found: every certificate is then unknown.
    fn verifier(&self) -> Option<&Arc<WebPkiServerVerifier>> {
        self.verifier
            .get_or_init(|| {
                let mut roots = RootCertStore::empty();
                let native = rustls_native_certs::load_native_certs();
                for error in &native.errors {
                    tracing::debug!(%error, "could not read part of the system certificate store");
                }
                roots.add_parsable_certificates(native.certs);
                roots.add_parsable_certificates(self.extra.iter().cloned());
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone()).build().ok()
            })
            .as_ref()
    }
}

impl ServerCertVerifier for LazyRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = match server_name {
            ServerName::DnsName(name) => name.as_ref().to_owned(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            _ => String::new(),
        };
        {
            if self.unverified.iter().any(|host| host == "*" || host.trim_start_matches('[').trim_end_matches(']') == name) {
                tracing::debug!(host = %name, "certificate not verified (--tls-verify=false)");
                return Ok(ServerCertVerified::assertion());
            }
        }
        let verdict = match self.verifier() {
            Some(verifier) => verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            None => Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        };
        match verdict {
            Err(error) if is_ca_used_as_end_entity(&error) && self.extra.iter().any(|c| c.as_ref() == end_entity.as_ref()) => {
                // `openssl req -x509` makes a certificate that is its own CA (CA:TRUE), and
                // WebPKI will not take a CA as a server's certificate. The user named exactly
                // this certificate with `--ca-cert`: trust it as Docker and curl do, for the
                // names it was issued to.
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            // A registry's own CA, as Docker and podman find it: `certs.d/HOST[:PORT]/*.crt`.
            Err(error) => match self.certs_d_verifier(&name) {
                Some(verifier) => verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now).map_err(|_| error),
                None => Err(error),
            },
            ok => ok,
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pem_bundle_without_certificates_is_refused() {
        assert!(super::parse_pem_bundle(b"hello").is_err());
    }
}
