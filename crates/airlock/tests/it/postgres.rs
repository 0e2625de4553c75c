//! Gate runs and import leases in PostgreSQL (`state: postgres://…`): several `airlock watch`
//! processes, as on different machines, share one throwaway cluster.

use std::path::Path;
use std::time::Duration;

use crate::gate::{eventually, policy_config, Killed, Upstream};
use crate::harness::postgres::Postgres;
use crate::harness::{Airlock, Served};

const PASSWORD_ENV: &str = "AIRLOCK_TEST_STATE_PASSWORD";

/// A node: its own folder and airlock.yaml, sharing the database (its `state`) with the others.
/// The gate sleeps on the node named `slow`, long enough to be killed in it.
fn node(dir: &Path, name: &str, served: &Served, postgres: &Postgres) -> std::path::PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let extra = format!(
        "      - name: check\n        command: [sh, -c, 'echo checked on $AIRLOCK_NODE; if [ \"$AIRLOCK_NODE\" = slow ]; then sleep 60; fi']\n        env: [AIRLOCK_NODE]\nstate: {}\nstate_password_env: {PASSWORD_ENV}\nlease: 3s\nwatch:\n  interval: 1s\n",
        postgres.url()
    );
    policy_config(&folder, served, &extra)
}

fn runs(airlock: &Airlock, file: &Path, password: &str) -> Vec<serde_json::Value> {
    let listed = airlock.run_env(&["runs", "list", "-f", file.to_str().unwrap(), "-o", "json"], &[(PASSWORD_ENV, password)]).success().json();
    listed["runs"].as_array().unwrap().clone()
}

#[test]
fn watchers_on_one_postgres_import_a_change_once_and_take_over_a_killed_nodes_import() {
    let postgres = Postgres::start();
    let dir = crate::harness::tempdir();
    let served = Served::start(&dir.path().join("registry"));
    let airlock = Airlock::new();
    let upstream = Upstream::new(dir.path());
    let password = postgres.password.clone();
    let env = |name: &'static str| vec![(PASSWORD_ENV, password.as_str()), ("AIRLOCK_NODE", name)];
    let (one, two, slow) = (node(dir.path(), "one", &served, &postgres), node(dir.path(), "two", &served, &postgres), node(dir.path(), "slow", &served, &postgres));
    let log = dir.path().join("watchers.log");
    let watch = |file: &Path, name: &'static str| Killed(airlock.spawn_logged(&["watch", "-f", file.to_str().unwrap(), "-v"], &env(name), &log));
    let stable = served.at("base-artifacts/node:15-alpine");
    let promoted = |digest: &str| airlock.run(&["digest", &stable]).stdout.trim() == digest;
    let failure = |what: &str| format!("{what}\nwatchers:\n{}\npostgres:\n{}", std::fs::read_to_string(&log).unwrap_or_default(), postgres.log());

    // Two nodes watch one upstream tag: each change is imported once, by one of them.
    let first = upstream.publish(&airlock, &served, "Orange");
    let node_one = watch(&one, "one");
    let node_two = watch(&two, "two");
    assert!(eventually(30, || promoted(&first)), "{}", failure("the watchers promoted the first digest"));
    let second = upstream.publish(&airlock, &served, "Green");
    assert!(eventually(30, || promoted(&second)), "{}", failure("an upstream change is imported"));
    std::thread::sleep(Duration::from_secs(3));
    let seen = runs(&airlock, &one, &password);
    for digest in [&first, &second] {
        let promotions = seen.iter().filter(|r| r["upstream_digest"] == **digest && r["status"] == "succeeded").count();
        assert_eq!(promotions, 1, "two watchers on one database, one promotion of {digest}: {seen:?}");
    }
    drop((node_one, node_two));

    // A node is killed (-9) in the middle of an import: its lease runs out and another node
    // finishes the import; meanwhile, while it renews its lease, nobody else starts one.
    let third = upstream.publish(&airlock, &served, "Blue");
    let mut slow_node = watch(&slow, "slow");
    let running = || runs(&airlock, &slow, &password).into_iter().find(|r| r["upstream_digest"] == third.as_str() && r["status"] == "running");
    assert!(eventually(30, || running().is_some()), "{}", failure("the slow node started the import"));
    let taken = running().unwrap()["run_id"].as_str().unwrap().to_owned();
    let node_two = watch(&two, "two");
    // Three leases long: the slow node renews its lease, so the other node waits.
    std::thread::sleep(Duration::from_secs(9));
    let meanwhile = runs(&airlock, &two, &password);
    let started: Vec<_> = meanwhile.iter().filter(|r| r["upstream_digest"] == third.as_str()).collect();
    assert_eq!(started.len(), 1, "only the lease holder runs the import while it lives: {started:?}");
    assert!(!promoted(&third));
    slow_node.0.kill().unwrap();
    slow_node.0.wait().unwrap();
    assert!(eventually(40, || promoted(&third)), "{}", failure("the other node took the import over after the lease ran out"));
    std::thread::sleep(Duration::from_secs(2));
    drop(node_two);

    // Every node lists the same runs, from the one database.
    let (seen_one, seen_two) = (runs(&airlock, &one, &password), runs(&airlock, &two, &password));
    assert_eq!(seen_one, seen_two, "runs list agrees on every node");
    let killed = seen_one.iter().find(|r| r["run_id"] == taken.as_str()).expect("the killed node's run is listed");
    assert_eq!(killed["status"], "error", "{killed}");
    assert!(killed["reason"].as_str().unwrap_or_default().contains("interrupted"), "{killed}");
    let finished: Vec<_> = seen_one.iter().filter(|r| r["upstream_digest"] == third.as_str() && r["status"] == "succeeded").collect();
    assert_eq!(finished.len(), 1, "{seen_one:?}");
    let logs = airlock.run_env(&["runs", "logs", finished[0]["run_id"].as_str().unwrap(), "-f", two.to_str().unwrap()], &[(PASSWORD_ENV, &password)]).success().stdout;
    assert!(logs.contains("checked on two"), "the surviving node ran the gate: {logs}");

    // The web page reads the same database: the killed run, filtered by status.
    let serve_yaml = dir.path().join("serve.yaml");
    std::fs::write(&serve_yaml, format!("ui:\n  gate_file: {}\n", two.display())).unwrap();
    let page = Served::start_with_env(&dir.path().join("page-root"), &["-f", serve_yaml.to_str().unwrap()], &[(PASSWORD_ENV.to_owned(), password.clone())]);
    let (status, html) = crate::harness::http_get(&page.url("/ui/runs?status=Error"));
    assert_eq!(status, 200, "{html}");
    assert!(html.contains(&taken) && html.contains("1 runs"), "{html}");
}

#[test]
fn a_database_that_cannot_be_reached_or_refuses_the_password_is_a_clear_error() {
    let postgres = Postgres::start();
    let dir = crate::harness::tempdir();
    let served = Served::start(&dir.path().join("registry"));
    let airlock = Airlock::new();
    let file = node(dir.path(), "one", &served, &postgres);
    let file = file.to_str().unwrap();
    let wrong = airlock.run_env(&["runs", "list", "-f", file], &[(PASSWORD_ENV, "not-the-password")]).code(1);
    assert!(wrong.stderr.contains(&postgres.url()) && wrong.stderr.contains("password authentication failed"), "{}", wrong.stderr);
    assert!(!wrong.stderr.contains("not-the-password"), "{}", wrong.stderr);
    let unset = airlock.run(&["import", "-f", file]).code(1);
    assert!(unset.stderr.contains(&format!("`state_password_env` names `{PASSWORD_ENV}`, which is not set")), "{}", unset.stderr);
    // A watch node's /healthz follows the database.
    let port = crate::harness::registry::free_port();
    let log = dir.path().join("watch.log");
    let _watch = Killed(airlock.spawn_logged(&["watch", "-f", file, "--listen", &format!("127.0.0.1:{port}")], &[(PASSWORD_ENV, &postgres.password)], &log));
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let health = || std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| crate::harness::http_get(&healthz));
    assert!(eventually(20, || health().is_some_and(|(status, _)| status == 200)), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    drop(postgres);
    assert!(eventually(20, || health().is_some_and(|(status, body)| status == 503 && body.contains("127.0.0.1"))), "{:?}", health());
    let down = airlock.run_env(&["runs", "list", "-f", file], &[(PASSWORD_ENV, "pg-test-secret")]).code(1);
    assert!(down.stderr.contains("127.0.0.1") && down.stderr.contains("hint: check the `state` URL"), "{}", down.stderr);
}
