//! The commit a gate repository is at: `git rev-parse HEAD` in a checkout, `git ls-remote URL
//! HEAD` for a remote. `airlock watch` runs the gates again when it changes (trigger `Commit`).

use std::time::Duration;

use crate::config::GateRepo;

/// How long git may take to answer.
const GIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The commit `repo` is at.
pub async fn head(repo: &GateRepo) -> Result<String, String> {
    let mut command = tokio::process::Command::new("git");
    match repo {
        GateRepo::Folder(folder) => command.arg("-C").arg(folder).args(["rev-parse", "HEAD"]),
        // Checked at load, and again here: a URL is never taken for an option of git's.
        GateRepo::Url(url) if url.starts_with('-') => return Err(format!("`{url}` is not a repository URL")),
        GateRepo::Url(url) => command.args(["ls-remote", "--", url, "HEAD"]),
    };
    command.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(GIT_TIMEOUT, command.output())
        .await
        .map_err(|_| format!("git did not answer within {}s", GIT_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let commit = text.split_whitespace().next().unwrap_or("").to_owned();
    if commit.len() < 40 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("git answered `{}`, not a commit", text.trim()));
    }
    Ok(commit)
}
