//! The run history: every import and rollback, its gates and logs; and the import leases that
//! keep two processes from running one import at once.
//!
//! Two stores behind one trait, [`RunStore`]: one SQLite file in a folder (the default: one
//! machine, several processes sharing the file in WAL mode) and PostgreSQL (`state:
//! postgres://…`: several `airlock watch` nodes on different machines sharing the imports).
//! A lease is a row naming its holder and when it expires; the holder renews it while the
//! import runs, so a killed holder's lease runs out and another process takes the import over.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

mod postgres;
mod sqlite;

/// A failure of the run database, with the place it concerns (a file, or a PostgreSQL URL
/// without its password).
#[derive(Debug, thiserror::Error)]
#[error("run database `{place}`: {message}")]
pub struct DbError {
    place: String,
    message: String,
}

impl DbError {
    fn new(place: &str, error: impl std::fmt::Display) -> DbError {
        DbError { place: place.to_owned(), message: error.to_string() }
    }
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
    /// A pull through the gated mirror of `airlock serve`.
    Pull,
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
            Trigger::Pull => "Pull",
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

    pub(crate) fn parse(text: &str) -> Status {
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

/// Where the run history and the leases live: `state:` in `airlock.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLocation {
    /// A folder holding `runs.db` (SQLite).
    Folder(std::path::PathBuf),
    /// A PostgreSQL database shared by several machines.
    Postgres {
        /// `postgres://user@host:port/database?sslmode=…`, as written.
        url: String,
        /// The variable holding the password (`state_password_env`; `PGPASSWORD` when unset),
        /// read when the database is opened so that the file never holds it.
        password_env: Option<String>,
    },
}

impl std::fmt::Display for StateLocation {
    /// The place for messages: a folder, or the URL without a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateLocation::Folder(folder) => write!(f, "{}", folder.join("runs.db").display()),
            StateLocation::Postgres { url, .. } => f.write_str(&postgres::without_password(url)),
        }
    }
}

/// The run history and the import leases. Every method is one statement or one transaction,
/// so several processes may share a store.
#[async_trait::async_trait]
pub trait RunStore: Send + Sync {
    /// Takes the lease `import` (a key: the pipeline's are a target repository and tag) for
    /// `holder` (`host:pid`) for `lease`. A lease that ran out,
    /// or whose holder is a dead process of this host, is taken over. Returns the holder in the
    /// way when the lease is held by someone else.
    async fn lock(&self, import: &str, holder: &str, lease: Duration) -> Result<Result<(), String>>;
    /// Extends a held lease by `lease` from now; `false` when `holder` no longer has it.
    async fn renew(&self, import: &str, holder: &str, lease: Duration) -> Result<bool>;
    /// Gives the lease back (only when `holder` still has it).
    async fn unlock(&self, import: &str, holder: &str) -> Result<()>;
    /// Records the start of a run and returns its id.
    async fn start(&self, import: &str, tag: &str, trigger: Trigger, upstream: Option<&str>) -> Result<String>;
    /// Sets the platform column of a running run.
    async fn set_platform(&self, run_id: &str, platform: &str) -> Result<()>;
    /// Appends a line to a run's log.
    async fn append_log(&self, run_id: &str, line: &str) -> Result<()>;
    /// Records one gate's result.
    async fn gate(&self, run_id: &str, position: usize, record: &GateRecord) -> Result<()>;
    /// Ends a run.
    async fn finish(&self, run_id: &str, end: &RunEnd<'_>) -> Result<()>;
    /// Sets a finished run's duration precisely (the start is kept in whole seconds).
    async fn set_duration(&self, run_id: &str, duration: Duration) -> Result<()>;
    /// The newest runs first, optionally of one import.
    async fn list(&self, import: Option<&str>, limit: usize) -> Result<Vec<Run>>;
    /// One run.
    async fn get(&self, run_id: &str) -> Result<Option<Run>>;
    /// A run's log and its gates.
    async fn logs(&self, run_id: &str) -> Result<(String, Vec<GateRecord>)>;
    /// The newest finished import run (not a rollback) of `import`/`tag`: what upstream digest
    /// was last dealt with, promoted or rejected.
    async fn last_import(&self, import: &str, tag: &str) -> Result<Option<Run>>;
    /// Whether a gate refused the run (as opposed to an error or a kill stopping it).
    async fn rejected_by_gate(&self, run_id: &str) -> Result<bool>;
    /// Successful runs of `import`/`tag` (imports and rollbacks), newest first: the digests the
    /// stable tag has pointed at.
    async fn promotions(&self, import: &str, tag: &str) -> Result<Vec<Run>>;
    /// Marks runs of `import`/`tag` left `Running` as errors. Called by the lease holder: any
    /// such run still marked running was left by a process that is gone (killed), so the
    /// table does not claim work that is not happening.
    async fn reap(&self, import: &str, tag: &str, reason: &str) -> Result<usize>;
    /// Whether the store answers (for health checks).
    async fn ping(&self) -> Result<()>;
    /// A page of runs, newest first, and how many match in all (the web page's paged table).
    async fn page(&self, filter: &RunFilter, offset: usize, limit: usize) -> Result<(Vec<Run>, usize)>;
    /// Every import name that has runs (the gated mirror's are made per tag, not configured).
    async fn import_names(&self) -> Result<Vec<String>>;
    /// Records when a watch loop looks at `import` next (seconds since the epoch), for the
    /// web page of any process sharing the store.
    async fn set_next_look(&self, import: &str, at: u64) -> Result<()>;
    /// The next looks recorded, by import.
    async fn next_looks(&self) -> Result<std::collections::HashMap<String, u64>>;
}

/// Which runs a [`RunStore::page`] shows; every field that is set must match.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Runs of these imports only (the ones a caller may see).
    pub imports: Option<Vec<String>>,
    /// Of this import.
    pub import: Option<String>,
    /// With this status, as the table shows it (`Failed`).
    pub status: Option<String>,
    /// With this trigger, as the table shows it (`Image Update`).
    pub trigger: Option<String>,
}

impl RunFilter {
    /// The filter as SQL conditions with numbered parameters from `first` (`?N` for SQLite,
    /// `$N` for PostgreSQL), and the values in order.
    fn conditions(&self, marker: char, first: usize) -> (String, Vec<String>) {
        let mut conditions = vec!["1 = 1".to_owned()];
        let mut values: Vec<String> = Vec::new();
        // The next parameter's placeholder, for `value`.
        let mut parameter = |value: &str| {
            values.push(value.to_owned());
            format!("{marker}{}", first + values.len() - 1)
        };
        for (column, value) in [("import", &self.import), ("status", &self.status), ("trigger", &self.trigger)] {
            if let Some(value) = value {
                conditions.push(format!("{column} = {}", parameter(value)));
            }
        }
        match &self.imports {
            Some(imports) if imports.is_empty() => conditions.push("1 = 0".into()),
            Some(imports) => {
                let placeholders: Vec<String> = imports.iter().map(|import| parameter(import)).collect();
                conditions.push(format!("import IN ({})", placeholders.join(", ")));
            }
            None => {}
        }
        (conditions.join(" AND "), values)
    }
}

/// How a run ended: what [`RunStore::finish`] records.
#[derive(Debug, Clone, Copy)]
pub struct RunEnd<'a> {
    /// `Succeeded`, `Failed` or `Error`.
    pub status: Status,
    /// The digest the stable tag points at now, when promoted.
    pub promoted: Option<&'a str>,
    /// What it pointed at before.
    pub previous: Option<&'a str>,
    /// The unique tag written.
    pub unique_tag: Option<&'a str>,
    /// Why it failed.
    pub reason: Option<&'a str>,
}

impl<'a> RunEnd<'a> {
    /// A run that did not promote, for `reason`.
    pub fn not_promoted(status: Status, reason: &'a str) -> RunEnd<'a> {
        RunEnd { status, promoted: None, previous: None, unique_tag: None, reason: Some(reason) }
    }
}

/// An open run store.
pub type Runs = Arc<dyn RunStore>;

/// Opens (creating) the store at `location`.
pub async fn open(location: &StateLocation) -> Result<Runs> {
    match location {
        StateLocation::Folder(folder) => Ok(Arc::new(sqlite::SqliteRuns::open(folder)?)),
        StateLocation::Postgres { url, password_env } => Ok(Arc::new(postgres::PostgresRuns::connect(url, password_env.as_deref()).await?)),
    }
}

/// A line as the log keeps it: ending with one newline.
fn log_line(text: &str) -> String {
    if text.ends_with('\n') {
        text.to_owned()
    } else {
        format!("{text}\n")
    }
}

/// The columns of a [`Run`], in the order both stores read them.
const COLUMNS: &str = "run_id, import, tag, platform, status, trigger, started, duration_ms, upstream_digest, promoted_digest, previous_digest, unique_tag, reason";

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

/// Two random lowercase letters, in front of every run id of a database (as ACR's `ca`, `da`),
/// so that run ids, and the unique tags made from them, differ between databases.
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

/// `status` as the enum.
pub fn status_of(run: &Run) -> Status {
    Status::parse(&run.status)
}

/// Whether the holder of a lease (`host:pid`) still runs. Holders on other hosts are assumed
/// alive until the lease runs out.
fn holder_alive(holder: &str) -> bool {
    let Some((host, pid)) = holder.rsplit_once(':') else { return true };
    if host != hostname() {
        return true;
    }
    Path::new("/proc").join(pid).exists()
}

/// This host's name, for lease holders.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "localhost".into())
}

/// This process as a lease holder.
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
    }

    #[test]
    fn filters_become_numbered_parameters() {
        let filter = RunFilter { imports: Some(vec!["a".into(), "b".into()]), status: Some("Failed".into()), ..RunFilter::default() };
        let (sql, values) = filter.conditions('$', 1);
        assert_eq!(sql, "1 = 1 AND status = $1 AND import IN ($2, $3)");
        assert_eq!(values, ["Failed", "a", "b"]);
        assert_eq!(RunFilter { imports: Some(Vec::new()), ..RunFilter::default() }.conditions('?', 1).0, "1 = 1 AND 1 = 0");
    }

    #[test]
    fn the_place_never_shows_a_password() {
        let location = StateLocation::Postgres { url: "postgres://airlock:hunter2@db.example:5432/airlock?sslmode=require".into(), password_env: None };
        assert_eq!(location.to_string(), "postgres://airlock:******@db.example:5432/airlock?sslmode=require");
    }
}
