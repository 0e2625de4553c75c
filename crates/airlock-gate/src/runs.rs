//! The run history: every import and rollback, its gates and logs, in one SQLite file.
//!
//! SQLite in WAL mode lets several processes (two `airlock watch`, an `airlock import` by hand)
//! share the file; the `locks` table keeps them from running one import at once.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// A failure of the run database, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("run database `{path}`: {source}")]
pub struct DbError {
    path: String,
    #[source]
    source: rusqlite::Error,
}

type Result<T, E = DbError> = std::result::Result<T, E>;

/// Why a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `airlock import` by hand.
    Manual,
    /// Upstream changed: seen by polling or told by a registry notification.
    ImageUpdate,
    /// The import's timer.
    Timer,
    /// `airlock rollback`.
    Rollback,
    /// A new commit in the repository of the gates' own files (`gate_repo`).
    Commit,
}

impl Trigger {
    /// As the run table shows it (ACR's names).
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "Manual",
            Trigger::ImageUpdate => "Image Update",
            Trigger::Timer => "Timer",
            Trigger::Rollback => "Rollback",
            Trigger::Commit => "Commit",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Still going (or killed: see `finished`).
    Running,
    /// Promoted (or rolled back).
    Succeeded,
    /// Refused by a gate; the target was left as it was.
    Failed,
    /// Stopped by something other than a gate's verdict (a registry, the container runtime, a
    /// kill); the target was left as it was and the digest is tried again.
    Error,
}

impl Status {
    /// As the run table shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "Running",
            Status::Succeeded => "Succeeded",
            Status::Failed => "Failed",
            Status::Error => "Error",
        }
    }

    fn parse(text: &str) -> Status {
        match text {
            "Succeeded" => Status::Succeeded,
            "Failed" => Status::Failed,
            "Error" => Status::Error,
            _ => Status::Running,
        }
    }
}

/// One recorded run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Short, unique in this database and prefixed per database (`ca1`, `ca2`, …); used in
    /// unique tags.
    pub run_id: String,
    /// The import's name.
    pub import: String,
    /// The upstream tag.
    pub tag: String,
    /// The platforms of the candidate (`linux/amd64`, or several joined by `,`).
    pub platform: String,
    /// `Running`, `Succeeded`, `Failed` (a gate refused) or `Error` (could not finish), as the
    /// run table shows it; `running`, `succeeded`… in JSON.
    #[serde(serialize_with = "snake_case")]
    pub status: String,
    /// Why it ran (`Image Update` in the table, `image_update` in JSON).
    #[serde(serialize_with = "snake_case")]
    pub trigger: String,
    /// Seconds since the epoch (RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub started: u64,
    /// Milliseconds, when finished.
    pub duration_ms: Option<u64>,
    /// The upstream digest the run saw.
    pub upstream_digest: Option<String>,
    /// The digest the stable tag points at after the run, when promoted.
    pub promoted_digest: Option<String>,
    /// What the stable tag pointed at before.
    pub previous_digest: Option<String>,
    /// The unique tag written.
    pub unique_tag: Option<String>,
    /// Why it failed.
    pub reason: Option<String>,
}

/// An enum value as airlock's JSON writes every one: `Image Update` → `image_update`.
fn snake_case<S: serde::Serializer>(value: &str, serializer: S) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_str(&value.trim().to_ascii_lowercase().replace([' ', '-'], "_"))
}

/// A time as airlock's JSON writes every one: RFC 3339, UTC.
fn rfc3339<S: serde::Serializer>(secs: &u64, serializer: S) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_str(&airlock_oci::time::rfc3339(*secs))
}

/// One gate's result within a run.
#[derive(Debug, Clone, Serialize)]
pub struct GateRecord {
    /// The gate's name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// `passed`, `failed` or `skipped`.
    pub result: String,
    /// Milliseconds.
    pub duration_ms: u64,
    /// What it printed or found.
    pub log: String,
}

/// The open run database.
pub struct Runs {
    connection: Connection,
    path: String,
    /// Two letters chosen when the database was made, in front of every run id (as ACR's `ca`,
    /// `da`), so that run ids, and the unique tags made from them, differ between databases.
    prefix: String,
}

use airlock_oci::time::now;

/// `("ca", 1)` → `ca1`, `("ca", 36)` → `ca10`: short ids in base 36, as ACR's run ids.
fn run_id(prefix: &str, sequence: i64) -> String {
    let mut n = sequence.max(0) as u64;
    let mut digits = Vec::new();
    loop {
        digits.push(char::from_digit((n % 36) as u32, 36).expect("base 36"));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    format!("{prefix}{}", digits.iter().rev().collect::<String>())
}

/// Two random lowercase letters.
fn random_prefix() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 2];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // No randomness to be had: the clock's nanoseconds will do for a prefix.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        bytes = [(nanos & 0xff) as u8, (nanos >> 8 & 0xff) as u8];
    }
    bytes.iter().map(|b| char::from(b'a' + b % 26)).collect()
}

impl Runs {
    /// Opens (creating) `folder/runs.db`.
    pub fn open(folder: &Path) -> Result<Runs> {
        let path = folder.join("runs.db");
        let name = path.display().to_string();
        let fail = |source| DbError { path: name.clone(), source };
        if let Err(e) = std::fs::create_dir_all(folder) {
            return Err(fail(rusqlite::Error::ToSqlConversionFailure(Box::new(e))));
        }
        let connection = Connection::open(&path).map_err(fail)?;
        connection.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 CREATE TABLE IF NOT EXISTS runs (
                     sequence INTEGER PRIMARY KEY AUTOINCREMENT,
                     run_id TEXT UNIQUE,
                     import TEXT NOT NULL,
                     tag TEXT NOT NULL,
                     platform TEXT NOT NULL DEFAULT '',
                     status TEXT NOT NULL,
                     trigger TEXT NOT NULL,
                     started INTEGER NOT NULL,
                     duration_ms INTEGER,
                     upstream_digest TEXT,
                     promoted_digest TEXT,
                     previous_digest TEXT,
                     unique_tag TEXT,
                     reason TEXT,
                     log TEXT NOT NULL DEFAULT ''
                 );
                 CREATE INDEX IF NOT EXISTS runs_by_import ON runs (import, tag, sequence);
                 CREATE TABLE IF NOT EXISTS gates (
                     run_id TEXT NOT NULL,
                     position INTEGER NOT NULL,
                     name TEXT NOT NULL,
                     kind TEXT NOT NULL,
                     result TEXT NOT NULL,
                     duration_ms INTEGER NOT NULL,
                     log TEXT NOT NULL,
                     PRIMARY KEY (run_id, position)
                 );
                 CREATE TABLE IF NOT EXISTS meta (
                     key TEXT PRIMARY KEY,
                     value TEXT NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS locks (
                     import TEXT PRIMARY KEY,
                     holder TEXT NOT NULL,
                     acquired INTEGER NOT NULL
                 );",
            )
            .map_err(fail)?;
        connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('run_id_prefix', ?1)", params![random_prefix()]).map_err(fail)?;
        let prefix: String = connection.query_row("SELECT value FROM meta WHERE key = 'run_id_prefix'", [], |row| row.get(0)).map_err(fail)?;
        Ok(Runs { connection, path: name, prefix })
    }

    fn fail(&self, source: rusqlite::Error) -> DbError {
        DbError { path: self.path.clone(), source }
    }

    /// Takes the lock of `import` for `holder` (`host:pid`). A lock whose holder is a dead
    /// process of this host, or older than `stale`, is taken over. Returns the holder in the
    /// way when the lock is taken.
    pub fn lock(&self, import: &str, holder: &str, stale: Duration) -> Result<Result<(), String>> {
        // IMMEDIATE: the read and the write below are one step for every process sharing the file.
        self.connection.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.fail(e))?;
        let outcome = (|| {
            let existing: Option<(String, u64)> = self
                .connection
                .query_row("SELECT holder, acquired FROM locks WHERE import = ?1", params![import], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            if let Some((other, acquired)) = existing {
                let expired = now().saturating_sub(acquired) > stale.as_secs();
                if !expired && other != holder && holder_alive(&other) {
                    return Ok(Err(other));
                }
            }
            self.connection.execute("INSERT OR REPLACE INTO locks (import, holder, acquired) VALUES (?1, ?2, ?3)", params![import, holder, now()])?;
            Ok(Ok(()))
        })();
        match outcome {
            Ok(result) => {
                self.connection.execute_batch("COMMIT").map_err(|e| self.fail(e))?;
                Ok(result)
            }
            Err(error) => {
                let _ = self.connection.execute_batch("ROLLBACK");
                Err(self.fail(error))
            }
        }
    }

    /// Gives the lock back (only when `holder` still has it).
    pub fn unlock(&self, import: &str, holder: &str) -> Result<()> {
        self.connection.execute("DELETE FROM locks WHERE import = ?1 AND holder = ?2", params![import, holder]).map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Records the start of a run and returns its id.
    pub fn start(&self, import: &str, tag: &str, trigger: Trigger, upstream: Option<&str>) -> Result<String> {
        let tx = self.connection.unchecked_transaction().map_err(|e| self.fail(e))?;
        tx.execute(
            "INSERT INTO runs (import, tag, status, trigger, started, upstream_digest) VALUES (?1, ?2, 'Running', ?3, ?4, ?5)",
            params![import, tag, trigger.as_str(), now(), upstream],
        )
        .map_err(|e| self.fail(e))?;
        let sequence = tx.last_insert_rowid();
        let id = run_id(&self.prefix, sequence);
        tx.execute("UPDATE runs SET run_id = ?1 WHERE sequence = ?2", params![id, sequence]).map_err(|e| self.fail(e))?;
        tx.commit().map_err(|e| self.fail(e))?;
        Ok(id)
    }

    /// Sets the platform column of a running run.
    pub fn set_platform(&self, run_id: &str, platform: &str) -> Result<()> {
        self.connection.execute("UPDATE runs SET platform = ?1 WHERE run_id = ?2", params![platform, run_id]).map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Appends lines to a run's log.
    pub fn log(&self, run_id: &str, text: &str) -> Result<()> {
        let line = if text.ends_with('\n') { text.to_owned() } else { format!("{text}\n") };
        self.connection.execute("UPDATE runs SET log = log || ?1 WHERE run_id = ?2", params![line, run_id]).map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Records one gate's result.
    pub fn gate(&self, run_id: &str, position: usize, record: &GateRecord) -> Result<()> {
        self.connection
            .execute(
                "INSERT OR REPLACE INTO gates (run_id, position, name, kind, result, duration_ms, log) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![run_id, position as i64, record.name, record.kind, record.result, record.duration_ms, record.log],
            )
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Ends a run.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(&self, run_id: &str, status: Status, promoted: Option<&str>, previous: Option<&str>, unique_tag: Option<&str>, reason: Option<&str>) -> Result<()> {
        let started: u64 = self.connection.query_row("SELECT started FROM runs WHERE run_id = ?1", params![run_id], |row| row.get(0)).map_err(|e| self.fail(e))?;
        let duration_ms = now().saturating_sub(started) * 1000;
        self.connection
            .execute(
                "UPDATE runs SET status = ?1, duration_ms = ?2, promoted_digest = ?3, previous_digest = ?4, unique_tag = ?5, reason = ?6 WHERE run_id = ?7",
                params![status.as_str(), duration_ms, promoted, previous, unique_tag, reason, run_id],
            )
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Sets a finished run's duration precisely (the start is kept in whole seconds).
    pub fn set_duration(&self, run_id: &str, duration: Duration) -> Result<()> {
        self.connection.execute("UPDATE runs SET duration_ms = ?1 WHERE run_id = ?2", params![duration.as_millis() as u64, run_id]).map_err(|e| self.fail(e))?;
        Ok(())
    }

    const COLUMNS: &'static str =
        "run_id, import, tag, platform, status, trigger, started, duration_ms, upstream_digest, promoted_digest, previous_digest, unique_tag, reason";

    fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
        Ok(Run {
            run_id: row.get(0)?,
            import: row.get(1)?,
            tag: row.get(2)?,
            platform: row.get(3)?,
            status: row.get(4)?,
            trigger: row.get(5)?,
            started: row.get(6)?,
            duration_ms: row.get(7)?,
            upstream_digest: row.get(8)?,
            promoted_digest: row.get(9)?,
            previous_digest: row.get(10)?,
            unique_tag: row.get(11)?,
            reason: row.get(12)?,
        })
    }

    /// The newest runs first, optionally of one import.
    pub fn list(&self, import: Option<&str>, limit: usize) -> Result<Vec<Run>> {
        let sql = format!("SELECT {} FROM runs WHERE (?1 IS NULL OR import = ?1) ORDER BY sequence DESC LIMIT ?2", Self::COLUMNS);
        let mut statement = self.connection.prepare(&sql).map_err(|e| self.fail(e))?;
        let rows = statement.query_map(params![import, limit as i64], Self::row).map_err(|e| self.fail(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.fail(e))
    }

    /// One run.
    pub fn get(&self, run_id: &str) -> Result<Option<Run>> {
        let sql = format!("SELECT {} FROM runs WHERE run_id = ?1", Self::COLUMNS);
        self.connection.query_row(&sql, params![run_id], Self::row).optional().map_err(|e| self.fail(e))
    }

    /// A run's log and its gates.
    pub fn logs(&self, run_id: &str) -> Result<(String, Vec<GateRecord>)> {
        let log: String = self.connection.query_row("SELECT log FROM runs WHERE run_id = ?1", params![run_id], |row| row.get(0)).map_err(|e| self.fail(e))?;
        let mut statement =
            self.connection.prepare("SELECT name, kind, result, duration_ms, log FROM gates WHERE run_id = ?1 ORDER BY position").map_err(|e| self.fail(e))?;
        let gates = statement
            .query_map(params![run_id], |row| Ok(GateRecord { name: row.get(0)?, kind: row.get(1)?, result: row.get(2)?, duration_ms: row.get(3)?, log: row.get(4)? }))
            .map_err(|e| self.fail(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.fail(e))?;
        Ok((log, gates))
    }

    /// The newest finished import run (not a rollback) of `import`/`tag`: what upstream digest
    /// was last dealt with, promoted or rejected.
    pub fn last_import(&self, import: &str, tag: &str) -> Result<Option<Run>> {
        let sql = format!(
            "SELECT {} FROM runs WHERE import = ?1 AND tag = ?2 AND trigger != 'Rollback' AND status != 'Running' ORDER BY sequence DESC LIMIT 1",
            Self::COLUMNS
        );
        self.connection.query_row(&sql, params![import, tag], Self::row).optional().map_err(|e| self.fail(e))
    }

    /// Whether a gate refused the run (as opposed to an error or a kill stopping it).
    pub fn rejected_by_gate(&self, run_id: &str) -> Result<bool> {
        self.connection
            .query_row("SELECT EXISTS (SELECT 1 FROM gates WHERE run_id = ?1 AND result = 'failed')", params![run_id], |row| row.get(0))
            .map_err(|e| self.fail(e))
    }

    /// Successful runs of `import`/`tag` (imports and rollbacks), newest first: the digests the
    /// stable tag has pointed at.
    pub fn promotions(&self, import: &str, tag: &str) -> Result<Vec<Run>> {
        let sql = format!(
            "SELECT {} FROM runs WHERE import = ?1 AND tag = ?2 AND status = 'Succeeded' AND promoted_digest IS NOT NULL ORDER BY sequence DESC",
            Self::COLUMNS
        );
        let mut statement = self.connection.prepare(&sql).map_err(|e| self.fail(e))?;
        let rows = statement.query_map(params![import, tag], Self::row).map_err(|e| self.fail(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.fail(e))
    }

    /// Marks runs left `Running` by a process that is gone (killed) as errors, so the table
    /// does not claim work that is not happening.
    pub fn reap(&self, import: &str, reason: &str) -> Result<usize> {
        self.connection
            .execute("UPDATE runs SET status = 'Error', reason = ?1 WHERE import = ?2 AND status = 'Running'", params![reason, import])
            .map_err(|e| self.fail(e))
    }
}

/// `status` as the enum.
pub fn status_of(run: &Run) -> Status {
    Status::parse(&run.status)
}

/// Whether the holder of a lock (`host:pid`) still runs. Holders on other hosts are assumed
/// alive until the lock goes stale.
fn holder_alive(holder: &str) -> bool {
    let Some((host, pid)) = holder.rsplit_once(':') else { return true };
    if host != hostname() {
        return true;
    }
    Path::new("/proc").join(pid).exists()
}

/// This host's name, for lock holders.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "localhost".into())
}

/// This process as a lock holder.
pub fn this_holder() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_short_and_ordered() {
        assert_eq!(run_id("ca", 1), "ca1");
        assert_eq!(run_id("ca", 35), "caz");
        assert_eq!(run_id("ca", 36), "ca10");
        let dir = tempfile::tempdir().unwrap();
        let first = Runs::open(dir.path()).unwrap().start("node", "1", Trigger::Manual, None).unwrap();
        let second = Runs::open(dir.path()).unwrap().start("node", "1", Trigger::Manual, None).unwrap();
        assert_eq!((first.len(), &first[..2]), (3, &second[..2]), "one prefix per database: {first} {second}");
        assert!(first.ends_with('1') && second.ends_with('2'));
    }

    #[test]
    fn runs_are_recorded_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let runs = Runs::open(dir.path()).unwrap();
        let first = runs.start("node", "15-alpine", Trigger::Manual, Some("sha256:aa")).unwrap();
        runs.gate(&first, 0, &GateRecord { name: "policy".into(), kind: "policy".into(), result: "passed".into(), duration_ms: 3, log: "ok".into() }).unwrap();
        runs.log(&first, "copied").unwrap();
        runs.finish(&first, Status::Succeeded, Some("sha256:aa"), None, Some("15-alpine-a1"), None).unwrap();
        let second = runs.start("node", "15-alpine", Trigger::ImageUpdate, Some("sha256:bb")).unwrap();
        runs.finish(&second, Status::Failed, None, None, None, Some("gate `policy` failed")).unwrap();
        let listed = runs.list(None, 10).unwrap();
        assert_eq!(listed.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), [second.as_str(), first.as_str()]);
        assert_eq!(runs.last_import("node", "15-alpine").unwrap().unwrap().run_id, second);
        assert_eq!(runs.promotions("node", "15-alpine").unwrap().len(), 1);
        assert!(!runs.rejected_by_gate(&second).unwrap(), "no gate failed in that run");
        runs.gate(&second, 0, &GateRecord { name: "policy".into(), kind: "policy".into(), result: "failed".into(), duration_ms: 1, log: String::new() }).unwrap();
        assert!(runs.rejected_by_gate(&second).unwrap());
        let (log, gates) = runs.logs(&first).unwrap();
        assert_eq!((log.as_str(), gates[0].result.as_str()), ("copied\n", "passed"));
    }

    #[test]
    fn a_lock_is_held_until_released_or_its_holder_dies() {
        let dir = tempfile::tempdir().unwrap();
        let runs = Runs::open(dir.path()).unwrap();
        let me = this_holder();
        assert!(runs.lock("node", &me, Duration::from_secs(3600)).unwrap().is_ok());
        let other = Runs::open(dir.path()).unwrap();
        assert_eq!(other.lock("node", "elsewhere:1", Duration::from_secs(3600)).unwrap(), Err(me.clone()));
        runs.unlock("node", &me).unwrap();
        assert!(other.lock("node", "elsewhere:1", Duration::from_secs(3600)).unwrap().is_ok());
        // A holder of this host whose process is gone loses the lock.
        let dead = format!("{}:{}", hostname(), u32::MAX);
        runs.unlock("node", "elsewhere:1").unwrap();
        assert!(runs.lock("node", &dead, Duration::from_secs(3600)).unwrap().is_ok());
        assert!(other.lock("node", &me, Duration::from_secs(3600)).unwrap().is_ok());
    }
}
