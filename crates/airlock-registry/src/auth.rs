//! Who may do what: htpasswd (bcrypt) users, per-repository rules, and optionally Docker-style
//! bearer tokens from the built-in issuer at `/token`.
//!
//! Rules are tried in order; the first whose pattern matches the repository decides. A
//! repository no rule matches is open to every authenticated user and closed to anonymous ones.
//! Patterns are repository names where `*` matches any run of characters (`public/*`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
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
    rules: Vec<Rule>,
    token_key: Option<Vec<u8>>,
    /// Verified (user, sha256 of password) pairs: bcrypt costs milliseconds on purpose, and a
    /// client sends the same credentials with every request.
    verified: Mutex<HashMap<(String, [u8; 32]), bool>>,
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
        let token_key = if file.token { Some(token_key(root)?) } else { None };
        Ok(Auth { users, rules, token_key, verified: Mutex::new(HashMap::new()) })
    }

    /// Whether bearer tokens are in use.
    pub fn uses_tokens(&self) -> bool {
        self.token_key.is_some()
    }

    /// Who sent `authorization` (the header's value).
    pub fn identify(&self, authorization: Option<&str>) -> Caller {
        let Some(value) = authorization else { return Caller::Anonymous };
        if let Some(encoded) = value.strip_prefix("Basic ") {
            return match self.check_basic(encoded) {
                Some(user) => Caller::User(user),
                None => Caller::Refused,
            };
        }
        if let Some(token) = value.strip_prefix("Bearer ") {
            return self.verify_token(token).unwrap_or(Caller::Refused);
        }
        Caller::Refused
    }

    /// The user named by basic credentials, when the password is right.
    pub fn check_basic(&self, encoded: &str) -> Option<String> {
        let decoded = STANDARD.decode(encoded.trim()).ok().and_then(|b| String::from_utf8(b).ok())?;
        let (user, password) = decoded.split_once(':')?;
        let hash = self.users.get(user)?;
        let key = (user.to_owned(), Sha256::digest(password.as_bytes()).into());
        if let Some(ok) = self.verified.lock().expect("cache lock").get(&key) {
            return ok.then(|| user.to_owned());
        }
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        self.verified.lock().expect("cache lock").insert(key, ok);
        ok.then(|| user.to_owned())
    }

    /// Whether `caller` may do `action` on `repository`.
    pub fn allows(&self, caller: &Caller, repository: &str, action: Action) -> bool {
        match caller {
            Caller::Refused => false,
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
            access.push(serde_json::json!({"type": "repository", "name": name, "actions": granted}));
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = serde_json::json!({
            "iss": "airlock", "aud": SERVICE, "sub": user.unwrap_or(""),
            "iat": now, "nbf": now.saturating_sub(5), "exp": now + TOKEN_LIFETIME.as_secs(), "access": access,
        });
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signature = sign(key, &format!("{header}.{payload}"));
        Some(format!("{header}.{payload}.{signature}"))
    }

    fn verify_token(&self, token: &str) -> Option<Caller> {
        let key = self.token_key.as_ref()?;
        let (signed, signature) = token.rsplit_once('.')?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        mac.update(signed.as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(signature).ok()?).ok()?;
        let (_, payload) = signed.split_once('.')?;
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if claims["exp"].as_u64()? < now || claims["aud"].as_str()? != SERVICE {
            return None;
        }
        let mut grants: HashMap<String, Vec<Action>> = HashMap::new();
        for entry in claims["access"].as_array()? {
            let name = entry["name"].as_str()?.to_owned();
            let actions = entry["actions"].as_array()?.iter().filter_map(|a| a.as_str().and_then(Action::parse));
            grants.entry(name).or_default().extend(actions);
        }
        Some(Caller::Token(claims["sub"].as_str().unwrap_or("").to_owned(), grants))
    }
}

fn sign(key: &[u8], input: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(input.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// The HMAC key in `ROOT/.token-key`, created from the system's random source on first use.
fn token_key(root: &Path) -> Result<Vec<u8>, String> {
    let path = root.join(".token-key");
    if let Ok(key) = std::fs::read(&path) {
        if key.len() >= 32 {
            return Ok(key);
        }
    }
    let mut key = vec![0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut key))
        .map_err(|e| format!("cannot read random bytes for the token key: {e}"))?;
    std::fs::create_dir_all(root).map_err(|e| format!("cannot create `{}`: {e}", root.display()))?;
    let temp = root.join(".token-key.tmp");
    std::fs::write(&temp, &key).and_then(|()| std::fs::rename(&temp, &path)).map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
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
        let alice = auth.identify(Some(&basic("alice", "secret")));
        assert_eq!(alice, Caller::User("alice".into()));
        assert_eq!(auth.identify(Some(&basic("alice", "wrong"))), Caller::Refused);
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
        let caller = auth.identify(Some(&format!("Bearer {token}")));
        assert!(auth.allows(&caller, "bob/x", Action::Push));
        assert!(!auth.allows(&caller, "public/y", Action::Push));
        assert!(!auth.allows(&caller, "bob/other", Action::Pull), "a token is for the repositories it names");
        let tampered = format!("{}x", token);
        assert_eq!(auth.identify(Some(&format!("Bearer {tampered}"))), Caller::Refused);
    }
}
