//! Who may do what: htpasswd (bcrypt) users, per-repository rules, and optionally Docker-style
//! bearer tokens from the built-in issuer at `/token`.
//!
//! Rules are tried in order; the first whose pattern matches the repository decides. A
//! repository no rule matches is open to every authenticated user and closed to anonymous ones.
//! Patterns are repository names where `*` matches any run of characters (`public/*`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What a request does to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read manifests, blobs, tags, referrers.
    Pull,
    /// Write manifests and blobs.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    fn parse(text: &str) -> Option<Action> {
        match text {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" | "*" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// The `auth` section of `serve.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// An htpasswd file of bcrypt entries (`htpasswd -B`).
    pub htpasswd: Option<std::path::PathBuf>,
    /// Issue bearer tokens at `/token` instead of answering basic auth on every request.
    #[serde(default)]
    pub token: bool,
    /// Per-repository rules, first match wins.
    #[serde(default)]
    pub rules: Vec<RuleFile>,
    /// The variable holding the token signing key (at least 32 bytes), shared by every replica
    /// so each accepts the others' tokens; default: a key made in `ROOT/.token-key`.
    pub token_key_env: Option<String>,
}

/// One rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Repository pattern, `*` matching any characters.
    pub repositories: String,
    /// What anyone may do, without credentials.
    #[serde(default)]
    pub anonymous: Vec<Action>,
    /// What each user may do.
    #[serde(default)]
    pub users: HashMap<String, Vec<Action>>,
}

struct Rule {
    pattern: regex::Regex,
    anonymous: Vec<Action>,
    users: HashMap<String, Vec<Action>>,
}

/// The access policy of a running registry.
pub struct Auth {
    users: HashMap<String, String>,
    /// A bcrypt hash of the users' cost that no password matches: an unknown user's password is
    /// checked against it, so a wrong guess takes as long whether or not the user exists.
    dummy_hash: String,
    rules: Vec<Rule>,
    token_key: Option<Vec<u8>>,
    /// Verified (user, sha256 of password) pairs: bcrypt costs milliseconds on purpose, and a
    /// client sends the same credentials with every request. Only successes are kept (a
    /// failure always pays bcrypt, like an unknown user), at most [`VERIFIED_LIMIT`].
    verified: Mutex<HashMap<(String, [u8; 32]), Instant>>,
    /// Failed logins per client address and user name.
    failures: Mutex<HashMap<(Option<IpAddr>, String), Failures>>,
}

/// How many verified passwords are remembered; past it the oldest half is forgotten.
const VERIFIED_LIMIT: usize = 1024;
/// How long a verified password is taken on trust before bcrypt checks it again (an htpasswd
/// change is seen within this time).
const VERIFIED_FOR: Duration = Duration::from_secs(300);
/// Failed logins a client may make for one user before it must wait.
const FREE_FAILURES: u32 = 5;
/// The longest wait after failed logins.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How many (client, user) failure records are kept; past it the expired ones go.
const FAILURES_LIMIT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// What checking basic credentials found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BasicCheck {
    /// The password is right.
    User(String),
    /// Unknown user or wrong password (not told apart).
    Wrong,
    /// Too many failures from this client for this user: not checked; try after this long.
    Throttled(Duration),
}

/// The identity behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credentials.
    Anonymous,
    /// A user whose password checked out.
    User(String),
    /// A bearer token's grants: repository → actions.
    Token(String, HashMap<String, Vec<Action>>),
    /// Credentials were given and are wrong.
    Refused,
    /// Too many failed logins from this client for this user: not checked.
    Throttled(Duration),
}

/// The lifetime of issued tokens.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// The `service` of issued tokens.
pub const SERVICE: &str = "airlock";

impl Auth {
    /// Builds the policy; `root` holds the token signing key (created on first use).
    pub fn load(file: &AuthFile, root: &Path) -> Result<Auth, String> {
        let mut users = HashMap::new();
        if let Some(path) = &file.htpasswd {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read htpasswd `{}`: {e}", path.display()))?;
            for (idx, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (user, hash) = line.split_once(':').ok_or_else(|| format!("`{}` line {}: expected `user:bcrypt-hash`", path.display(), idx + 1))?;
                if !hash.starts_with("$2") {
                    return Err(format!("`{}` line {}: only bcrypt entries are accepted (`htpasswd -B`)", path.display(), idx + 1));
                }
                users.insert(user.to_owned(), hash.to_owned());
            }
        }
        let rules = file
            .rules
            .iter()
            .map(|rule| {
                let pattern = format!("^{}$", regex::escape(&rule.repositories).replace("\\*", ".*"));
                Ok(Rule {
                    pattern: regex::Regex::new(&pattern).map_err(|e| format!("rule `{}`: {e}", rule.repositories))?,
                    anonymous: rule.anonymous.clone(),
                    users: rule.users.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        let token_key = match (file.token, &file.token_key_env) {
            (false, _) => None,
            (true, Some(variable)) => {
                let key = std::env::var(variable).map_err(|_| format!("`auth.token_key_env`: the variable `{variable}` is not set"))?;
                if key.len() < 32 {
                    return Err(format!("`auth.token_key_env`: the key in `{variable}` is shorter than 32 bytes"));
                }
                Some(key.into_bytes())
            }
            (true, None) => Some(token_key(root)?),
        };
        // The users' own cost (`$2y$COST$…`), so the dummy check costs what a real one does.
        let cost = users.values().filter_map(|hash| hash.split('$').nth(2)?.parse::<u32>().ok()).max().unwrap_or(bcrypt::DEFAULT_COST);
        let dummy_hash = if users.is_empty() { String::new() } else { bcrypt::hash("airlock: no such user", cost).map_err(|e| format!("cannot make the dummy bcrypt hash: {e}"))? };
        Ok(Auth { users, dummy_hash, rules, token_key, verified: Mutex::new(HashMap::new()), failures: Mutex::new(HashMap::new()) })
    }

    /// Whether bearer tokens are in use.
    pub fn uses_tokens(&self) -> bool {
        self.token_key.is_some()
    }

    /// Who sent `authorization` (the header's value) from `client`.
    pub fn identify(&self, authorization: Option<&str>, client: Option<IpAddr>) -> Caller {
        let Some(value) = authorization else { return Caller::Anonymous };
        if let Some(encoded) = value.strip_prefix("Basic ") {
            return match self.check_basic(encoded, client) {
                BasicCheck::User(user) => Caller::User(user),
                BasicCheck::Wrong => Caller::Refused,
                BasicCheck::Throttled(wait) => Caller::Throttled(wait),
            };
        }
        if let Some(token) = value.strip_prefix("Bearer ") {
            return self.verify_token(token).unwrap_or(Caller::Refused);
        }
        Caller::Refused
    }

    /// Checks basic credentials (the header's base64) sent from `client`. Unknown users and
    /// wrong passwords cost the same bcrypt check and get the same answer; after
    /// [`FREE_FAILURES`] failures a client waits, twice as long after each further failure.
    pub fn check_basic(&self, encoded: &str, client: Option<IpAddr>) -> BasicCheck {
        let Some(decoded) = STANDARD.decode(encoded.trim()).ok().and_then(|b| String::from_utf8(b).ok()) else { return BasicCheck::Wrong };
        let Some((user, password)) = decoded.split_once(':') else { return BasicCheck::Wrong };
        let key = (user.to_owned(), Sha256::digest(password.as_bytes()).into());
        if self.verified.lock().expect("cache lock").get(&key).is_some_and(|at| at.elapsed() < VERIFIED_FOR) {
            return BasicCheck::User(user.to_owned());
        }
        let failure_key = (client, user.to_owned());
        if let Some(blocked_until) = self.failures.lock().expect("failures lock").get(&failure_key).and_then(|f| f.blocked_until) {
            let now = Instant::now();
            if blocked_until > now {
                return BasicCheck::Throttled(blocked_until - now);
            }
        }
        let ok = match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, &self.dummy_hash);
                false
            }
        };
        if ok {
            self.failures.lock().expect("failures lock").remove(&failure_key);
            let mut verified = self.verified.lock().expect("cache lock");
            if verified.len() >= VERIFIED_LIMIT {
                let mut ages: Vec<Instant> = verified.values().copied().collect();
                ages.sort();
                let median = ages[ages.len() / 2];
                verified.retain(|_, at| *at > median);
            }
            verified.insert(key, Instant::now());
            return BasicCheck::User(user.to_owned());
        }
        self.record_failure(failure_key);
        BasicCheck::Wrong
    }

    fn record_failure(&self, key: (Option<IpAddr>, String)) {
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("failures lock");
        if failures.len() >= FAILURES_LIMIT {
            failures.retain(|_, f| f.blocked_until.is_some_and(|until| until > now) || now.duration_since(f.last) < MAX_BACKOFF);
        }
        let entry = failures.entry(key.clone()).or_insert(Failures { count: 0, last: now, blocked_until: None });
        // A client that stayed quiet for the longest back-off starts afresh.
        if now.duration_since(entry.last) > MAX_BACKOFF {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = now;
        let client = key.0.map(|ip| ip.to_string()).unwrap_or_else(|| "an unknown address".into());
        if entry.count >= FREE_FAILURES {
            let wait = Duration::from_secs(1u64 << (entry.count - FREE_FAILURES).min(16)).min(MAX_BACKOFF);
            entry.blocked_until = Some(now + wait);
            tracing::warn!(%client, user = %key.1, failures = entry.count, wait_s = wait.as_secs(), "failed login; further attempts must wait");
        } else {
            tracing::info!(%client, user = %key.1, failures = entry.count, "failed login");
        }
    }

    /// Whether `caller` may do `action` on `repository`.
    pub fn allows(&self, caller: &Caller, repository: &str, action: Action) -> bool {
        match caller {
            Caller::Refused | Caller::Throttled(_) => false,
            Caller::Token(_, grants) => grants.get(repository).is_some_and(|actions| actions.contains(&action)),
            Caller::Anonymous => self.rule(repository).is_some_and(|rule| rule.anonymous.contains(&action)),
            Caller::User(user) => match self.rule(repository) {
                Some(rule) => rule.anonymous.contains(&action) || rule.users.get(user).is_some_and(|actions| actions.contains(&action)),
                None => true,
            },
        }
    }

    fn rule(&self, repository: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.pattern.is_match(repository))
    }

    /// A token for `user` (or anonymous) with what the rules allow of the `scopes` asked for
    /// (`repository:NAME:ACTIONS`).
    pub fn issue_token(&self, user: Option<&str>, scopes: &[String]) -> Option<String> {
        let key = self.token_key.as_ref()?;
        let caller = match user {
            Some(user) => Caller::User(user.to_owned()),
            None => Caller::Anonymous,
        };
        let mut access = Vec::new();
        for scope in scopes.iter().flat_map(|s| s.split(' ')) {
            let mut parts = scope.splitn(3, ':');
            let (Some("repository"), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next()) else { continue };
            let granted: Vec<&str> = actions
                .split(',')
                .filter_map(Action::parse)
                .filter(|action| self.allows(&caller, name, *action))
                .map(Action::as_str)
                .collect();
            access.push(AccessEntry { kind: "repository".into(), name: name.to_owned(), actions: granted.into_iter().map(str::to_owned).collect() });
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            aud: SERVICE.to_owned(),
            sub: user.unwrap_or("").to_owned(),
            iat: now,
            nbf: now.saturating_sub(5),
            exp: now + TOKEN_LIFETIME.as_secs(),
            access,
        };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &jsonwebtoken::EncodingKey::from_secret(key)).ok()
    }

    /// The grants of a token this registry issued: signature, `exp`, `nbf`, `iss` and `aud`
    /// checked by `jsonwebtoken` (HS256 only: a token naming another algorithm is refused).
    fn verify_token(&self, token: &str) -> Option<Caller> {
        let key = self.token_key.as_ref()?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[SERVICE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<Claims>(token, &jsonwebtoken::DecodingKey::from_secret(key), &validation).ok()?.claims;
        let mut grants: HashMap<String, Vec<Action>> = HashMap::new();
        for entry in claims.access.into_iter().filter(|e| e.kind == "repository") {
            let actions = entry.actions.iter().filter_map(|a| Action::parse(a));
            grants.entry(entry.name).or_default().extend(actions);
        }
        Some(Caller::Token(claims.sub, grants))
    }
}

/// The `iss` of issued tokens.
const ISSUER: &str = "airlock";

/// A token's claims (Docker token spec: `access` lists what the bearer may do).
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    access: Vec<AccessEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AccessEntry {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

/// The HMAC key in `ROOT/.token-key`, created (mode 0600) from the system's random source on
/// first use. A key file others may read is refused: whoever reads it can mint tokens.
fn token_key(root: &Path) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = root.join(".token-key");
    if let Ok(metadata) = std::fs::metadata(&path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!("the token signing key `{}` may be read by others (mode {mode:04o}): run `chmod 600 {}`", path.display(), path.display()));
        }
        let key = std::fs::read(&path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        if key.len() >= 32 {
            return Ok(key);
        }
    }
    let mut key = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut key))
        .map_err(|e| format!("cannot read random bytes for the token key: {e}"))?;
    std::fs::create_dir_all(root).map_err(|e| format!("cannot create `{}`: {e}", root.display()))?;
    let temp = root.join(format!(".token-key.tmp-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| file.write_all(&key).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&temp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(format!("cannot write `{}`: {e}", path.display()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(token: bool) -> (Auth, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let hash = bcrypt::hash("secret", 4).unwrap();
        std::fs::write(&htpasswd, format!("alice:{hash}\nbob:{hash}\n")).unwrap();
        let file: AuthFile = serde_saphyr::from_str(&format!(
            "htpasswd: {}\ntoken: {token}\nrules:\n  - repositories: 'public/*'\n    anonymous: [pull]\n    users: {{alice: [pull, push]}}\n  - repositories: 'bob/*'\n    users: {{bob: [pull, push, delete]}}\n",
            htpasswd.display()
        ))
        .unwrap();
        (Auth::load(&file, dir.path()).unwrap(), dir)
    }

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
    }

    #[test]
    fn rules_first_match_and_defaults() {
        let (auth, _dir) = auth(false);
        let alice = auth.identify(Some(&basic("alice", "secret")), None);
        assert_eq!(alice, Caller::User("alice".into()));
        assert_eq!(auth.identify(Some(&basic("alice", "wrong")), None), Caller::Refused);
        assert!(auth.allows(&Caller::Anonymous, "public/x", Action::Pull));
        assert!(!auth.allows(&Caller::Anonymous, "public/x", Action::Push));
        assert!(auth.allows(&alice, "public/x", Action::Push));
        assert!(!auth.allows(&alice, "bob/x", Action::Pull), "bob's rule names only bob");
        assert!(auth.allows(&alice, "elsewhere", Action::Delete), "no rule: authenticated users may");
        assert!(!auth.allows(&Caller::Anonymous, "elsewhere", Action::Pull));
    }

    #[test]
    fn tokens_carry_only_what_the_rules_grant() {
        let (auth, _dir) = auth(true);
        let token = auth.issue_token(Some("bob"), &["repository:bob/x:pull,push repository:public/y:push".into()]).unwrap();
        let caller = auth.identify(Some(&format!("Bearer {token}")), None);
        assert!(auth.allows(&caller, "bob/x", Action::Push));
        assert!(!auth.allows(&caller, "public/y", Action::Push));
        assert!(!auth.allows(&caller, "bob/other", Action::Pull), "a token is for the repositories it names");
        let tampered = format!("{}x", token);
        assert_eq!(auth.identify(Some(&format!("Bearer {tampered}")), None), Caller::Refused);
        // Signed with the key but not ours to accept: another issuer or audience, expired,
        // not yet valid, or `alg: none`.
        let key = auth.token_key.clone().unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let forged = |iss: &str, aud: &str, nbf: u64, exp: u64| {
            let claims = Claims { iss: iss.into(), aud: aud.into(), sub: "bob".into(), iat: now, nbf, exp, access: vec![] };
            let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &jsonwebtoken::EncodingKey::from_secret(&key)).unwrap();
            auth.identify(Some(&format!("Bearer {token}")), None)
        };
        assert!(matches!(forged(ISSUER, SERVICE, now, now + 60), Caller::Token(..)));
        assert_eq!(forged("someone-else", SERVICE, now, now + 60), Caller::Refused);
        assert_eq!(forged(ISSUER, "another-service", now, now + 60), Caller::Refused);
        assert_eq!(forged(ISSUER, SERVICE, now - 600, now - 300), Caller::Refused, "expired");
        assert_eq!(forged(ISSUER, SERVICE, now + 300, now + 600), Caller::Refused, "not yet valid");
        let (_, payload) = token.split_once('.').unwrap();
        let (payload, _) = payload.split_once('.').unwrap();
        let unsigned = format!("{}.{payload}.", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(auth.identify(Some(&format!("Bearer {unsigned}")), None), Caller::Refused);
    }

    #[test]
    fn a_wrong_guess_costs_the_same_for_known_and_unknown_users() {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        // The cost htpasswd -B uses by default.
        std::fs::write(&htpasswd, format!("alice:{}\n", bcrypt::hash("secret", 5).unwrap())).unwrap();
        let file: AuthFile = serde_saphyr::from_str(&format!("htpasswd: {}\n", htpasswd.display())).unwrap();
        let auth = Auth::load(&file, dir.path()).unwrap();
        // Interleaved, so that a machine busy with other work slows both alike.
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for n in 0..50u32 {
            for (user, samples) in [("alice", &mut known), ("mallory", &mut unknown)] {
                // A new client address each time, so the back-off never answers instead.
                let client = Some(IpAddr::from([10, 0, (n / 250) as u8, (n % 250) as u8]));
                let started = Instant::now();
                assert_eq!(auth.check_basic(&STANDARD.encode(format!("{user}:guess{n}")), client), BasicCheck::Wrong);
                samples.push(started.elapsed());
            }
        }
        let median = |samples: &mut Vec<Duration>| {
            samples.sort();
            samples[samples.len() / 2]
        };
        let (known, unknown) = (median(&mut known), median(&mut unknown));
        let ratio = known.as_secs_f64() / unknown.as_secs_f64();
        assert!((0.8..=1.25).contains(&ratio), "known {known:?} vs unknown {unknown:?}");
    }

    #[test]
    fn failed_logins_back_off_per_client_and_user() {
        let (auth, _dir) = auth(false);
        let client = Some(IpAddr::from([192, 0, 2, 1]));
        let wrong = STANDARD.encode("alice:wrong");
        for _ in 0..FREE_FAILURES {
            assert_eq!(auth.check_basic(&wrong, client), BasicCheck::Wrong);
        }
        assert!(matches!(auth.check_basic(&wrong, client), BasicCheck::Throttled(_)));
        // Even the right password waits: the guesser must not learn it was right.
        assert!(matches!(auth.check_basic(&STANDARD.encode("alice:secret"), client), BasicCheck::Throttled(_)));
        // Another client, or another user from the same client, is not held up.
        assert_eq!(auth.check_basic(&STANDARD.encode("alice:secret"), Some(IpAddr::from([192, 0, 2, 2]))), BasicCheck::User("alice".into()));
        assert_eq!(auth.check_basic(&STANDARD.encode("bob:secret"), client), BasicCheck::User("bob".into()));
    }

    #[test]
    fn the_token_key_is_private_and_a_readable_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_auth, dir) = auth(true);
        let key = dir.path().join(".token-key");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = token_key(dir.path()).unwrap_err();
        assert!(refused.contains("may be read by others") && refused.contains("chmod 600"), "{refused}");
    }
}
