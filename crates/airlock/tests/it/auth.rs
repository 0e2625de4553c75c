//! Authentication against real registries: htpasswd basic auth and Docker token auth.

use base64::Engine as _;

use crate::harness::fixtures::{image, layer, push};
use crate::harness::token::{TokenIssuer, User};
use crate::harness::{Airlock, Auth, Registry};

const SECRET: &str = "s3cr3t-Pa55word";

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[test]
fn htpasswd_registry_with_right_wrong_and_no_credentials() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::Htpasswd(vec![("alice", SECRET)]));
    let img = image("amd64", &[layer(60, 20_000)]);
    push(&source.host(), "app", &img, Some("v1"), None);
    let airlock = Airlock::new();

    let anonymous = airlock.run(&["copy", &source.at("app:v1"), &target.at("app:v1")]).code(1);
    assert!(anonymous.stderr.contains("401") && anonymous.stderr.contains(&target.at("app")), "{}", anonymous.stderr);
    assert!(anonymous.stderr.contains("hint: check the credentials"), "{}", anonymous.stderr);
    // The hint names the flags `copy` has.
    assert!(anonymous.stderr.contains("--dest-creds") && !anonymous.stderr.contains("`--creds"), "{}", anonymous.stderr);

    let wrong = airlock.run(&["copy", &source.at("app:v1"), &target.at("app:v1"), "--dest-creds", "alice:not-the-password"]).code(1);
    assert!(wrong.stderr.contains("credentials were refused"), "{}", wrong.stderr);
    assert!(!target.has_manifest("app", "v1", Some(("alice", SECRET))));

    let right = airlock.run(&["copy", &source.at("app:v1"), &target.at("app:v1"), "--dest-creds", &format!("alice:{SECRET}"), "-vvv"]).success();
    assert!(target.has_manifest("app", "v1", Some(("alice", SECRET))));
    for run in [&anonymous, &wrong, &right] {
        assert!(!run.stderr.contains(SECRET) && !run.stdout.contains(SECRET), "secret leaked:\n{}", run.stderr);
        assert!(!run.stderr.contains(&basic("alice", SECRET)[6..]), "encoded secret leaked");
    }
}

#[test]
fn login_stores_credentials_that_later_commands_use_and_logout_removes_them() {
    let registry = Registry::start(Auth::Htpasswd(vec![("alice", SECRET)]));
    let img = image("amd64", &[layer(61, 1000)]);
    push(&registry.host(), "app", &img, Some("v1"), Some(&basic("alice", SECRET)));
    let airlock = Airlock::new();
    let authfile = airlock.authfile();
    let authfile = authfile.to_str().unwrap();

    let refused = airlock.run_with_stdin(&["login", &registry.host(), "-u", "alice", "--password-stdin", "--authfile", authfile], Some("wrong\n")).code(1);
    assert!(refused.stderr.contains("hint: check the user name and password") && !refused.stderr.contains("airlock login"), "{}", refused.stderr);
    assert!(!airlock.authfile().exists(), "a refused login must not write credentials");
    let login = airlock.run_with_stdin(&["login", &registry.host(), "-u", "alice", "--password-stdin", "--authfile", authfile], Some(&format!("{SECRET}\n"))).success();
    assert!(login.stdout.contains("Login Succeeded"));
    assert!(!login.stdout.contains(SECRET) && !login.stderr.contains(SECRET));

    // skopeo reads what airlock wrote.
    let digest = crate::harness::skopeo(&["inspect", "--raw", "--tls-verify=false", "--authfile", authfile, &format!("docker://{}", registry.at("app:v1"))]).success();
    assert_eq!(crate::harness::sha256(&digest.stdout_bytes), img.digest);
    let digest = airlock.run(&["digest", &registry.at("app:v1"), "--authfile", authfile]).success();
    assert_eq!(digest.stdout.trim(), img.digest);

    // On a terminal, `login -u USER` asks for the password and does not echo it.
    let script = crate::harness::require("script", "bsdutils");
    let prompted = airlock.path("prompted.json");
    let shell_command = format!(
        "env HOME={home} {airlock} login {host} -u alice --authfile {file}",
        home = airlock.home.path().display(),
        airlock = env!("CARGO_BIN_EXE_airlock"),
        host = registry.host(),
        file = prompted.display()
    );
    // Typed after the prompt shows (a second later), as a person would.
    let mut command = std::process::Command::new("bash");
    command.arg("-c").arg(format!("(sleep 1; printf '%s\\n' '{SECRET}') | {} -qec '{shell_command}' /dev/null", script.display()));
    let terminal = crate::harness::run_command(command, None).success();
    assert!(terminal.stdout.contains("Password for alice at") && terminal.stdout.contains("Login Succeeded"), "{:?}", terminal.stdout);
    assert!(!terminal.stdout.contains(SECRET), "the password was echoed: {:?}", terminal.stdout);
    assert!(prompted.is_file());

    airlock.run(&["logout", &registry.host(), "--authfile", authfile]).success();
    airlock.run(&["digest", &registry.at("app:v1"), "--authfile", authfile]).code(1);
    airlock.run(&["logout", &registry.host(), "--authfile", authfile]).code(1).stderr_has("not logged in");
}

#[test]
fn docker_config_json_is_read_from_docker_config() {
    let registry = Registry::start(Auth::Htpasswd(vec![("alice", SECRET)]));
    let img = image("amd64", &[layer(62, 1000)]);
    push(&registry.host(), "app", &img, Some("v1"), Some(&basic("alice", SECRET)));
    let airlock = Airlock::new();
    let docker = airlock.path(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{SECRET}"));
    std::fs::write(docker.join("config.json"), format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host())).unwrap();
    let digest = airlock.run(&["digest", &registry.at("app:v1")]).success();
    assert_eq!(digest.stdout.trim(), img.digest);

    // REGISTRY_AUTH_FILE (podman's) is read before Docker's file.
    std::fs::write(docker.join("config.json"), "{}").unwrap();
    let podman = airlock.path("podman-auth.json");
    std::fs::write(&podman, format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host())).unwrap();
    let env = [("DOCKER_CONFIG", docker.to_str().unwrap()), ("REGISTRY_AUTH_FILE", podman.to_str().unwrap())];
    let run = airlock.run_env(&["digest", &registry.at("app:v1")], &env).success();
    assert_eq!(run.stdout.trim(), img.digest);
}

pub(crate) fn token_registry() -> Registry {
    let issuer = TokenIssuer::start(
        vec![
            ("alice", User { password: SECRET, grants: vec![("", vec!["pull", "push"])] }),
            ("bob", User { password: "bobs-password", grants: vec![("bob/", vec!["pull", "push"])] }),
        ],
        vec![("refresh-token-of-alice", "alice")],
        vec!["public/"],
    );
    Registry::start(Auth::Token(issuer))
}

#[test]
fn token_auth_scopes_each_repository() {
    let registry = token_registry();
    let issuer = registry.token.clone().unwrap();
    let admin = |repository: &str| format!("Bearer {}", issuer.sign("admin", &[(repository.to_owned(), vec!["pull".into(), "push".into()])]));
    let img = image("amd64", &[layer(63, 30_000)]);
    push(&registry.host(), "public/base", &img, Some("v1"), Some(&admin("public/base")));
    push(&registry.host(), "alice/private", &img, Some("v1"), Some(&admin("alice/private")));
    let airlock = Airlock::new();

    // Anonymous pull where the issuer allows it, refused elsewhere.
    let public = airlock.run(&["digest", &registry.at("public/base:v1")]).success();
    assert_eq!(public.stdout.trim(), img.digest);
    airlock.run(&["digest", &registry.at("alice/private:v1")]).code(1).stderr_has("hint:");

    // bob may write bob/*, and his token for it does not open alice's repository.
    let bob = "bob:bobs-password";
    airlock.run(&["copy", &registry.at("public/base:v1"), &registry.at("bob/base:v1"), "--src-creds", bob, "--dest-creds", bob]).success();
    assert_eq!(registry.skopeo_digest("public/base:v1"), img.digest);
    let denied = airlock.run(&["copy", &registry.at("public/base:v1"), &registry.at("alice/base:v1"), "--src-creds", bob, "--dest-creds", bob]).code(1);
    assert!(denied.stderr.contains("alice/base"), "{}", denied.stderr);
    airlock.run(&["digest", &registry.at("alice/private:v1"), "--creds", bob]).code(1);

    // alice's password and alice's refresh token (identitytoken) both work.
    let digest = airlock.run(&["digest", &registry.at("alice/private:v1"), "--creds", &format!("alice:{SECRET}")]).success();
    assert_eq!(digest.stdout.trim(), img.digest);
    let authfile = airlock.authfile();
    std::fs::write(&authfile, format!(r#"{{"auths":{{"{}":{{"identitytoken":"refresh-token-of-alice"}}}}}}"#, registry.host())).unwrap();
    let digest = airlock.run(&["digest", &registry.at("alice/private:v1"), "--authfile", authfile.to_str().unwrap()]).success();
    assert_eq!(digest.stdout.trim(), img.digest);

    // login through the token service, then copy with the stored credentials.
    let login_file = airlock.path("login.json");
    let login_file = login_file.to_str().unwrap();
    airlock.run(&["login", &registry.host(), "-u", "alice", "-p", SECRET, "--authfile", login_file]).success();
    airlock.run(&["login", &registry.host(), "-u", "alice", "-p", "nope", "--authfile", login_file]).code(1).stderr_has("refused");
    let report = airlock.run(&["copy", &registry.at("alice/private:v1"), &registry.at("alice/copy:v1"), "--authfile", login_file, "-o", "json"]).success().json();
    assert_eq!(report["digest"], img.digest);
    assert_eq!(report["blobs_mounted"], 2, "mount from alice/private with a token scoped to both repositories");
}

#[test]
fn credential_helpers_are_run_with_the_docker_protocol() {
    let registry = Registry::start(Auth::Htpasswd(vec![("helper-user", SECRET)]));
    let img = image("amd64", &[layer(64, 1000)]);
    push(&registry.host(), "app", &img, Some("v1"), Some(&basic("helper-user", SECRET)));
    let airlock = Airlock::new();
    // A helper that answers for this registry only, and records what it was asked.
    let bin = airlock.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-airlocktest");
    let asked = airlock.path("asked");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" > {asked}\n[ \"$server\" = {host} ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\necho '{{\"ServerURL\":\"{host}\",\"Username\":\"helper-user\",\"Secret\":\"{SECRET}\"}}'\n",
            asked = asked.display(),
            host = registry.host()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = airlock.path("helper.json");
    std::fs::write(&config, format!(r#"{{"credHelpers":{{"{}":"airlocktest"}}}}"#, registry.host())).unwrap();

    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let run = airlock.run_env(&["digest", &registry.at("app:v1"), "--authfile", config.to_str().unwrap()], &[("PATH", &path)]).success();
    assert_eq!(run.stdout.trim(), img.digest);
    assert_eq!(std::fs::read_to_string(&asked).unwrap().trim(), registry.host());
}

#[test]
fn json_output_and_help_never_show_secrets() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::Htpasswd(vec![("alice", SECRET)]));
    let img = image("amd64", &[layer(65, 1000)]);
    push(&source.host(), "app", &img, Some("v1"), None);
    let airlock = Airlock::new();
    let creds = format!("alice:{SECRET}");
    let run = airlock.run(&["copy", &source.at("app:v1"), &target.at("app:v1"), "--dest-creds", &creds, "-o", "json", "-vv"]).success();
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET));
    let failed = airlock.run(&["copy", &source.at("app:v1"), &target.at("app:v2"), "--dest-creds", "alice:wrong-Secret-42", "-o", "json", "-vvv"]).code(1);
    assert!(!failed.stdout.contains("wrong-Secret-42") && !failed.stderr.contains("wrong-Secret-42"), "{}", failed.stderr);
    for command in [&["copy", "--help"][..], &["login", "--help"][..]] {
        let help = airlock.run(command).success();
        assert!(help.stdout.contains("USER:PASSWORD") || help.stdout.contains("--password-stdin"));
    }
}
