//! A real CNCF distribution registry (`docker-registry`, Debian's package) on a loopback port.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::token::TokenIssuer;
use super::require;

/// How the registry authenticates.
pub enum Auth {
    /// Anyone may pull and push.
    None,
    /// htpasswd basic auth (bcrypt) with these users.
    Htpasswd(Vec<(&'static str, &'static str)>),
    /// Docker token auth through an in-process issuer.
    Token(TokenIssuer),
}

pub struct Registry {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    pub token: Option<TokenIssuer>,
}

impl Registry {
    pub fn start(auth: Auth) -> Registry {
        Self::start_with(auth, false, String::new())
    }

    /// An open registry that sends its events (distribution's notifications) to `url`.
    pub fn start_notifying(url: &str) -> Registry {
        let yaml = format!("notifications:\n  endpoints:\n    - name: airlock\n      url: {url}\n      timeout: 2s\n      threshold: 5\n      backoff: 1s\n");
        Self::start_with(Auth::None, false, yaml)
    }

    /// A registry serving HTTPS with a self-signed certificate for 127.0.0.1 (`ca_cert()`).
    pub fn start_tls() -> Registry {
        Self::start_with(Auth::None, true, String::new())
    }

    /// The CA (here: the certificate itself) of a TLS registry, in `ca.crt` of its own folder, as
    /// skopeo's `--cert-dir` wants it.
    pub fn ca_cert(&self) -> std::path::PathBuf {
        self.dir.path().join("certs/ca.crt")
    }

    fn start_with(auth: Auth, tls: bool, extra_yaml: String) -> Registry {
        let binary = require("docker-registry", "docker-registry");
        let dir = super::tempdir();
        let (auth_yaml, token) = match auth {
            Auth::None => (String::new(), None),
            Auth::Htpasswd(users) => {
                let htpasswd = require("htpasswd", "apache2-utils");
                let file = dir.path().join("htpasswd");
                let mut lines = String::new();
                for (user, password) in users {
                    let out = Command::new(&htpasswd).args(["-Bbn", user, password]).output().expect("run htpasswd");
                    assert!(out.status.success(), "htpasswd failed");
                    lines.push_str(String::from_utf8_lossy(&out.stdout).trim());
                    lines.push('\n');
                }
                std::fs::write(&file, lines).expect("write htpasswd");
                (format!("auth:\n  htpasswd:\n    realm: airlock-test\n    path: {}\n", file.display()), None)
            }
            Auth::Token(issuer) => (
                format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    issuer.realm(),
                    super::token::SERVICE,
                    super::token::ISSUER,
                    issuer.cert_path().display()
                ),
                Some(issuer),
            ),
        };
        let tls_yaml = if tls {
            let (cert, key) = tls_files(dir.path());
            format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display())
        } else {
            String::new()
        };
        for _ in 0..20 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: airlock-test-secret\n{tls_yaml}{auth_yaml}{extra_yaml}",
                    root = dir.path().join("data").display()
                ),
            )
            .expect("write registry config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
            let mut child = Command::new(&binary)
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start docker-registry: {e}"));
            if wait_ready(port, &mut child) {
                return Registry { port, child, dir, token };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("docker-registry did not start; log:\n{}", std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default());
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT/REPO`
    pub fn at(&self, repository_and_tag: &str) -> String {
        format!("{}/{repository_and_tag}", self.host())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host())
    }

    /// The digest of the bytes skopeo reads at `repository:tag` (or `repository@digest`).
    pub fn skopeo_digest(&self, reference: &str) -> String {
        super::skopeo_digest(&format!("docker://{}", self.at(reference)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Whether a manifest exists, asked with plain HTTP (no airlock code), with the admin
    /// credentials where the registry needs them.
    pub fn has_manifest(&self, repository: &str, reference: &str, basic: Option<(&str, &str)>) -> bool {
        let client = reqwest::blocking_free_get(&self.url(&format!("/v2/{repository}/manifests/{reference}")), basic, self.token.as_ref(), repository);
        client == 200
    }
}

/// A GET answered synchronously; returns the status (no reqwest blocking feature needed).
mod reqwest {
    pub fn blocking_free_get(url: &str, basic: Option<(&str, &str)>, token: Option<&super::TokenIssuer>, repository: &str) -> u16 {
        let url = url.to_owned();
        let header = match (basic, token) {
            (Some((user, password)), _) => {
                use base64::Engine as _;
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))))
            }
            (None, Some(issuer)) => Some(format!("Bearer {}", issuer.sign("admin", &[(repository.to_owned(), vec!["pull".into()])]))),
            (None, None) => None,
        };
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let client = ::reqwest::Client::new();
                let mut request = client.get(&url).header("accept", airlock_media_types());
                if let Some(header) = header {
                    request = request.header("authorization", header);
                }
                request.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
            })
        })
        .join()
        .expect("request thread")
    }

    fn airlock_media_types() -> &'static str {
        "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub fn wait_ready(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A CA (in `DIR/certs/ca.crt`, for skopeo's `--cert-dir` and airlock's `--ca-cert`) and a leaf
/// for 127.0.0.1 signed by it (in `DIR/server/`; webpki refuses a CA used as the leaf). Returns
/// the leaf's certificate and key.
pub fn tls_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let openssl = require("openssl", "openssl");
    let (certs, server) = (dir.join("certs"), dir.join("server"));
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::create_dir_all(&server).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&openssl).args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(&[&["req", "-x509"][..], &ec, &["-days", "2", "-subj", "/CN=airlock-test-ca", "-keyout", "server/ca.key", "-out", "certs/ca.crt"]].concat());
    run(&[&["req"][..], &ec, &["-subj", "/CN=127.0.0.1", "-keyout", "server/key.pem", "-out", "server/leaf.csr"]].concat());
    std::fs::write(server.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&["x509", "-req", "-in", "server/leaf.csr", "-CA", "certs/ca.crt", "-CAkey", "server/ca.key", "-CAcreateserial", "-days", "2", "-extfile", "server/san.ext", "-out", "server/leaf.crt"]);
    (server.join("leaf.crt"), server.join("key.pem"))
}
