//! `airlock serve` itself, on a free loopback port, over a folder that outlives restarts.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Served {
    pub root: PathBuf,
    pub address: String,
    child: Child,
}

impl Served {
    /// Starts a server over `root` and waits for its `listening on` line.
    pub fn start(root: &Path) -> Served {
        Self::start_with(root, &[])
    }

    /// With more `airlock serve` flags (`--config`, `--htpasswd`, `--token`).
    pub fn start_with(root: &Path, extra: &[&str]) -> Served {
        Self::start_with_env(root, extra, &[])
    }

    /// With flags and environment variables (an object store's `AWS_*` settings).
    pub fn start_with_env(root: &Path, extra: &[&str], env: &[(String, String)]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(["serve", "--root", root.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start airlock serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let address = line
            .trim()
            .strip_prefix("listening on http://")
            .or_else(|| line.trim().strip_prefix("listening on https://"))
            .unwrap_or_else(|| panic!("airlock serve said {line:?} instead of `listening on http://…`"))
            .to_owned();
        Served { root: root.to_owned(), address, child }
    }

    /// `127.0.0.1:PORT/REPO[:TAG]`
    pub fn at(&self, repository_and_tag: &str) -> String {
        format!("{}/{repository_and_tag}", self.address)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// SIGTERM, then wait for the exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().expect("wait for airlock serve")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to tidy up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
