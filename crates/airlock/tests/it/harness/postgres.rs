//! A throwaway PostgreSQL cluster (Debian's `postgresql`): `initdb` into a temp folder and
//! `pg_ctl start` on a free loopback port, as the `postgres` user when the tests run as root
//! (PostgreSQL refuses to run as root); stopped and removed on drop.

use std::path::PathBuf;
use std::process::Command;

use super::registry::free_port;

pub struct Postgres {
    pub port: u16,
    /// The superuser's password (the user is `airlock`; host connections need it).
    pub password: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

/// The folder of `initdb` and `pg_ctl`: on PATH, or Debian's versioned folder.
fn server_bin() -> PathBuf {
    if let Some(found) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file()) {
        return found;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|bin| bin.join("initdb").is_file()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| panic!("PostgreSQL's server is not installed; these tests need it: `apt-get install postgresql` (README's test command installs it)"))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().next().map(|id| id == "0")))
        .unwrap_or(false)
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = server_bin();
        let dir = tempfile::Builder::new().prefix("airlock-pg").tempdir_in("/tmp").expect("temp dir");
        if is_root() {
            let uid = id_of("-u");
            let gid = id_of("-g");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("give the cluster's folder to postgres");
        }
        let password = "pg-test-secret".to_owned();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        let port = free_port();
        let postgres = Postgres { port, password, bin, dir };
        let data = postgres.data();
        postgres
            .as_owner(&[
                "initdb",
                "-D",
                data.to_str().unwrap(),
                "-U",
                "airlock",
                &format!("--pwfile={}", pwfile.display()),
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .success();
        let options = format!("-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off", postgres.dir.path().display());
        let log = postgres.dir.path().join("server.log");
        postgres.as_owner(&["pg_ctl", "-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &options, "-w", "-t", "60", "start"]).success();
        postgres
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://airlock@127.0.0.1:PORT/postgres`: no password in it (it comes from a variable).
    pub fn url(&self) -> String {
        format!("postgres://airlock@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs a server program (`initdb`, `pg_ctl`) as the cluster's owner.
    fn as_owner(&self, args: &[&str]) -> super::Run {
        let program = self.bin.join(args[0]);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        command.args(&args[1..]).current_dir(self.dir.path());
        super::run_command(command, None)
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

fn id_of(flag: &str) -> u32 {
    let output = Command::new("id").args([flag, "postgres"]).output().expect("run id");
    assert!(output.status.success(), "running as root, the tests start PostgreSQL as the `postgres` user, which does not exist: `apt-get install postgresql`");
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("a numeric id")
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.as_owner(&["pg_ctl", "-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
    }
}
