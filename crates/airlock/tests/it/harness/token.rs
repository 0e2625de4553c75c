//! A Docker token issuer (the other side of the token protocol): `GET /token` with basic auth or
//! `POST /token` with a refresh token, answering ES256 JWTs whose `x5c` certificate the registry
//! trusts through `rootcertbundle`. Access is granted per user and repository prefix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

use super::proxy::runtime;

pub const SERVICE: &str = "airlock-test-registry";
pub const ISSUER: &str = "airlock-test-issuer";

struct Keys {
    _dir: tempfile::TempDir,
    cert_path: PathBuf,
    cert_der: Vec<u8>,
    pkcs8: Vec<u8>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let openssl = super::require("openssl", "openssl");
        let dir = super::tempdir();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let der = dir.path().join("cert.der");
        let key_der = dir.path().join("key.der");
        let run = |args: &[&str]| {
            let out = std::process::Command::new(&openssl).args(args).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let p = |path: &Path| path.display().to_string();
        run(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &p(&key)]);
        run(&["pkcs8", "-topk8", "-nocrypt", "-in", &p(&key), "-outform", "DER", "-out", &p(&key_der)]);
        run(&["req", "-new", "-x509", "-key", &p(&key), "-out", &p(&cert), "-days", "2", "-subj", "/CN=airlock-test-token"]);
        run(&["x509", "-in", &p(&cert), "-outform", "DER", "-out", &p(&der)]);
        Keys { cert_der: std::fs::read(&der).unwrap(), pkcs8: std::fs::read(&key_der).unwrap(), cert_path: cert, _dir: dir }
    })
}

/// One user's password and grants: (repository prefix, actions).
pub struct User {
    pub password: &'static str,
    pub grants: Vec<(&'static str, Vec<&'static str>)>,
}

#[derive(Clone)]
pub struct TokenIssuer {
    port: u16,
    state: Arc<IssuerState>,
}

struct IssuerState {
    users: HashMap<&'static str, User>,
    /// Refresh tokens (`identitytoken`) and the user they stand for.
    refresh_tokens: HashMap<&'static str, &'static str>,
    /// Repository prefixes anyone may pull.
    anonymous_pull: Vec<&'static str>,
}

impl TokenIssuer {
    pub fn start(users: Vec<(&'static str, User)>, refresh_tokens: Vec<(&'static str, &'static str)>, anonymous_pull: Vec<&'static str>) -> TokenIssuer {
        keys();
        let state = Arc::new(IssuerState { users: users.into_iter().collect(), refresh_tokens: refresh_tokens.into_iter().collect(), anonymous_pull });
        let listener = runtime().block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let router = axum::Router::new().route("/token", get(token_get).post(token_post)).with_state(state.clone());
        runtime().spawn(async move { axum::serve(listener, router).await });
        TokenIssuer { port, state }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    pub fn cert_path(&self) -> &Path {
        &keys().cert_path
    }

    /// A signed token for `subject` with exactly `access` (repository, actions).
    pub fn sign(&self, subject: &str, access: &[(String, Vec<String>)]) -> String {
        sign(subject, access)
    }
}

fn sign(subject: &str, access: &[(String, Vec<String>)]) -> String {
    let keys = keys();
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": [STANDARD.encode(&keys.cert_der)]});
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let access: Vec<_> = access
        .iter()
        .map(|(name, actions)| serde_json::json!({"type": "repository", "name": name, "actions": actions}))
        .collect();
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", rand_suffix()), "access": access,
    });
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let rng = ring::rand::SystemRandom::new();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &keys.pkcs8, &rng).expect("P-256 key");
    let signature = pair.sign(&rng, signing_input.as_bytes()).expect("sign");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

fn grant(state: &IssuerState, user: Option<&str>, scopes: &[String]) -> Vec<(String, Vec<String>)> {
    let mut granted = Vec::new();
    for scope in scopes.iter().flat_map(|s| s.split(' ')) {
        let mut parts = scope.splitn(3, ':');
        let (Some("repository"), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let allowed: Vec<String> = actions
            .split(',')
            .filter(|action| {
                let by_user = user.and_then(|u| state.users.get(u)).is_some_and(|u| {
                    u.grants.iter().any(|(prefix, actions)| name.starts_with(prefix) && actions.contains(action))
                });
                let anonymous = *action == "pull" && state.anonymous_pull.iter().any(|prefix| name.starts_with(prefix));
                by_user || anonymous
            })
            .map(str::to_owned)
            .collect();
        if !allowed.is_empty() {
            granted.push((name.to_owned(), allowed));
        }
    }
    granted
}

fn answer(subject: &str, access: Vec<(String, Vec<String>)>) -> Response {
    let token = sign(subject, &access);
    axum::Json(serde_json::json!({"token": token, "access_token": token, "expires_in": 300})).into_response()
}

async fn token_get(State(state): State<Arc<IssuerState>>, headers: HeaderMap, Query(query): Query<Vec<(String, String)>>) -> Response {
    let scopes: Vec<String> = query.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    let user = match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        None => None,
        Some(value) => {
            let decoded = value
                .strip_prefix("Basic ")
                .and_then(|b| STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok());
            let Some((name, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                return StatusCode::UNAUTHORIZED.into_response();
            };
            match state.users.get_key_value(name) {
                Some((name, user)) if user.password == password => Some(*name),
                _ => return (StatusCode::UNAUTHORIZED, "wrong credentials").into_response(),
            }
        }
    };
    let access = grant(&state, user, &scopes);
    answer(user.unwrap_or(""), access)
}

async fn token_post(State(state): State<Arc<IssuerState>>, axum::Form(form): axum::Form<Vec<(String, String)>>) -> Response {
    let get = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    if get("grant_type").as_deref() != Some("refresh_token") {
        return (StatusCode::BAD_REQUEST, "unsupported grant_type").into_response();
    }
    let Some(user) = get("refresh_token").and_then(|t| state.refresh_tokens.get(t.as_str()).copied()) else {
        return (StatusCode::UNAUTHORIZED, "unknown refresh token").into_response();
    };
    let scopes: Vec<String> = form.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    let access = grant(&state, Some(user), &scopes);
    answer(user, access)
}
