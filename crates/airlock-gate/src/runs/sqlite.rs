//! The run store in one SQLite file, `runs.db` in the state folder: the single-machine default.
//!
//! WAL mode lets several processes (two `airlock watch`, an `airlock import` by hand) share the
//! file; `BEGIN IMMEDIATE` makes a lease's read and write one step for all of them.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use airlock_oci::time::now;
use rusqlite::{params, Connection, OptionalExtension};

use super::{holder_alive, log_line, random_prefix, run_id, DbError, GateRecord, Result, Run, RunEnd, RunFilter, RunStore, Trigger, COLUMNS};

/// The open file. A connection is used by one thread at a time.
pub(super) struct SqliteRuns {
    connection: Mutex<Connection>,
    path: String,
    prefix: String,
}

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

impl SqliteRuns {
    /// Opens (creating) `folder/runs.db`.
    pub(super) fn open(folder: &Path) -> Result<SqliteRuns> {
        let path = folder.join("runs.db");
        let name = path.display().to_string();
        let fail = |source: rusqlite::Error| DbError::new(&name, source);
        std::fs::create_dir_all(folder).map_err(|e| DbError::new(&name, format!("cannot create the folder: {e}")))?;
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
                 CREATE TABLE IF NOT EXISTS schedule (
                     import TEXT PRIMARY KEY,
                     next_look INTEGER NOT NULL
                 );
                 -- `acquired`: when the lease was taken or last renewed.
                 CREATE TABLE IF NOT EXISTS locks (
                     import TEXT PRIMARY KEY,
                     holder TEXT NOT NULL,
                     acquired INTEGER NOT NULL
                 );",
            )
            .map_err(fail)?;
        connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('run_id_prefix', ?1)", params![random_prefix()]).map_err(fail)?;
        let prefix: String = connection.query_row("SELECT value FROM meta WHERE key = 'run_id_prefix'", [], |row| row.get(0)).map_err(fail)?;
        Ok(SqliteRuns { connection: Mutex::new(connection), path: name, prefix })
    }

    /// Runs `f` on the connection, naming the file in its error.
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let connection = self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&connection).map_err(|e| DbError::new(&self.path, e))
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction: its reads and writes are one step for every
    /// process sharing the file.
    fn immediate<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        self.with(|connection| {
            connection.execute_batch("BEGIN IMMEDIATE")?;
            match f(connection) {
                Ok(value) => {
                    connection.execute_batch("COMMIT")?;
                    Ok(value)
                }
                Err(error) => {
                    let _ = connection.execute_batch("ROLLBACK");
                    Err(error)
                }
            }
        })
    }

    fn query_runs(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Run>> {
        self.with(|connection| connection.prepare(sql)?.query_map(params, row)?.collect())
    }
}

#[async_trait::async_trait]
impl RunStore for SqliteRuns {
    async fn lock(&self, import: &str, holder: &str, lease: Duration) -> Result<Result<(), String>> {
        self.immediate(|connection| {
            let existing: Option<(String, u64)> =
                connection.query_row("SELECT holder, acquired FROM locks WHERE import = ?1", params![import], |row| Ok((row.get(0)?, row.get(1)?))).optional()?;
            if let Some((other, acquired)) = existing {
                let expired = now().saturating_sub(acquired) > lease.as_secs();
                if !expired && other != holder && holder_alive(&other) {
                    return Ok(Err(other));
                }
            }
            connection.execute("INSERT OR REPLACE INTO locks (import, holder, acquired) VALUES (?1, ?2, ?3)", params![import, holder, now()])?;
            Ok(Ok(()))
        })
    }

    async fn renew(&self, import: &str, holder: &str, _lease: Duration) -> Result<bool> {
        self.with(|connection| connection.execute("UPDATE locks SET acquired = ?1 WHERE import = ?2 AND holder = ?3", params![now(), import, holder])).map(|n| n == 1)
    }

    async fn unlock(&self, import: &str, holder: &str) -> Result<()> {
        self.with(|connection| connection.execute("DELETE FROM locks WHERE import = ?1 AND holder = ?2", params![import, holder])).map(drop)
    }

    async fn start(&self, import: &str, tag: &str, trigger: Trigger, upstream: Option<&str>) -> Result<String> {
        self.immediate(|connection| {
            connection.execute(
                "INSERT INTO runs (import, tag, status, trigger, started, upstream_digest) VALUES (?1, ?2, 'Running', ?3, ?4, ?5)",
                params![import, tag, trigger.as_str(), now(), upstream],
            )?;
            let sequence = connection.last_insert_rowid();
            let id = run_id(&self.prefix, sequence);
            connection.execute("UPDATE runs SET run_id = ?1 WHERE sequence = ?2", params![id, sequence])?;
            Ok(id)
        })
    }

    async fn set_platform(&self, run_id: &str, platform: &str) -> Result<()> {
        self.with(|connection| connection.execute("UPDATE runs SET platform = ?1 WHERE run_id = ?2", params![platform, run_id])).map(drop)
    }

    async fn append_log(&self, run_id: &str, text: &str) -> Result<()> {
        self.with(|connection| connection.execute("UPDATE runs SET log = log || ?1 WHERE run_id = ?2", params![log_line(text), run_id])).map(drop)
    }

    async fn gate(&self, run_id: &str, position: usize, record: &GateRecord) -> Result<()> {
        self.with(|connection| {
            connection.execute(
                "INSERT OR REPLACE INTO gates (run_id, position, name, kind, result, duration_ms, log) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![run_id, position as i64, record.name, record.kind, record.result, record.duration_ms, record.log],
            )
        })
        .map(drop)
    }

    async fn finish(&self, run_id: &str, end: &RunEnd<'_>) -> Result<()> {
        self.with(|connection| {
            let started: u64 = connection.query_row("SELECT started FROM runs WHERE run_id = ?1", params![run_id], |row| row.get(0))?;
            let duration_ms = now().saturating_sub(started) * 1000;
            connection.execute(
                "UPDATE runs SET status = ?1, duration_ms = ?2, promoted_digest = ?3, previous_digest = ?4, unique_tag = ?5, reason = ?6 WHERE run_id = ?7",
                params![end.status.as_str(), duration_ms, end.promoted, end.previous, end.unique_tag, end.reason, run_id],
            )
        })
        .map(drop)
    }

    async fn set_duration(&self, run_id: &str, duration: Duration) -> Result<()> {
        self.with(|connection| connection.execute("UPDATE runs SET duration_ms = ?1 WHERE run_id = ?2", params![duration.as_millis() as u64, run_id])).map(drop)
    }

    async fn list(&self, import: Option<&str>, limit: usize) -> Result<Vec<Run>> {
        self.query_runs(&format!("SELECT {COLUMNS} FROM runs WHERE (?1 IS NULL OR import = ?1) ORDER BY sequence DESC LIMIT ?2"), params![import, limit as i64])
    }

    async fn get(&self, run_id: &str) -> Result<Option<Run>> {
        self.with(|connection| connection.query_row(&format!("SELECT {COLUMNS} FROM runs WHERE run_id = ?1"), params![run_id], row).optional())
    }

    async fn logs(&self, run_id: &str) -> Result<(String, Vec<GateRecord>)> {
        self.with(|connection| {
            let log: String = connection.query_row("SELECT log FROM runs WHERE run_id = ?1", params![run_id], |row| row.get(0))?;
            let gates = connection
                .prepare("SELECT name, kind, result, duration_ms, log FROM gates WHERE run_id = ?1 ORDER BY position")?
                .query_map(params![run_id], |row| Ok(GateRecord { name: row.get(0)?, kind: row.get(1)?, result: row.get(2)?, duration_ms: row.get(3)?, log: row.get(4)? }))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((log, gates))
        })
    }

    async fn last_import(&self, import: &str, tag: &str) -> Result<Option<Run>> {
        let sql = format!("SELECT {COLUMNS} FROM runs WHERE import = ?1 AND tag = ?2 AND trigger != 'Rollback' AND status != 'Running' ORDER BY sequence DESC LIMIT 1");
        self.with(|connection| connection.query_row(&sql, params![import, tag], row).optional())
    }

    async fn rejected_by_gate(&self, run_id: &str) -> Result<bool> {
        self.with(|connection| connection.query_row("SELECT EXISTS (SELECT 1 FROM gates WHERE run_id = ?1 AND result = 'failed')", params![run_id], |row| row.get(0)))
    }

    async fn promotions(&self, import: &str, tag: &str) -> Result<Vec<Run>> {
        self.query_runs(
            &format!("SELECT {COLUMNS} FROM runs WHERE import = ?1 AND tag = ?2 AND status = 'Succeeded' AND promoted_digest IS NOT NULL ORDER BY sequence DESC"),
            params![import, tag],
        )
    }

    async fn reap(&self, import: &str, tag: &str, reason: &str) -> Result<usize> {
        self.with(|connection| {
            connection.execute("UPDATE runs SET status = 'Error', reason = ?1 WHERE import = ?2 AND tag = ?3 AND status = 'Running'", params![reason, import, tag])
        })
    }

    async fn ping(&self) -> Result<()> {
        self.with(|connection| connection.query_row("SELECT 1", [], |_| Ok(())))
    }

    async fn import_names(&self) -> Result<Vec<String>> {
        self.with(|connection| connection.prepare("SELECT DISTINCT import FROM runs ORDER BY import")?.query_map([], |row| row.get(0))?.collect())
    }

    async fn set_next_look(&self, import: &str, at: u64) -> Result<()> {
        self.with(|connection| connection.execute("INSERT OR REPLACE INTO schedule (import, next_look) VALUES (?1, ?2)", params![import, at])).map(drop)
    }

    async fn next_looks(&self) -> Result<std::collections::HashMap<String, u64>> {
        self.with(|connection| connection.prepare("SELECT import, next_look FROM schedule")?.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect())
    }

    async fn page(&self, filter: &RunFilter, offset: usize, limit: usize) -> Result<(Vec<Run>, usize)> {
        let (conditions, values) = filter.conditions('?', 1);
        let n = values.len();
        self.with(|connection| {
            let total: i64 = connection.query_row(&format!("SELECT COUNT(*) FROM runs WHERE {conditions}"), rusqlite::params_from_iter(values.iter()), |row| row.get(0))?;
            let sql = format!("SELECT {COLUMNS} FROM runs WHERE {conditions} ORDER BY sequence DESC LIMIT ?{} OFFSET ?{}", n + 1, n + 2);
            let mut all: Vec<rusqlite::types::Value> = values.iter().map(|v| rusqlite::types::Value::Text(v.clone())).collect();
            all.push(rusqlite::types::Value::Integer(limit as i64));
            all.push(rusqlite::types::Value::Integer(offset as i64));
            let runs = connection.prepare(&sql)?.query_map(rusqlite::params_from_iter(all.iter()), row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((runs, total.max(0) as usize))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{hostname, this_holder, RunFilter, Status};
    use super::*;

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(future)
    }

    #[test]
    fn one_prefix_per_database() {
        let dir = tempfile::tempdir().unwrap();
        let first = block_on(SqliteRuns::open(dir.path()).unwrap().start("node", "1", Trigger::Manual, None)).unwrap();
        let second = block_on(SqliteRuns::open(dir.path()).unwrap().start("node", "1", Trigger::Manual, None)).unwrap();
        assert_eq!((first.len(), &first[..2]), (3, &second[..2]), "one prefix per database: {first} {second}");
        assert!(first.ends_with('1') && second.ends_with('2'));
    }

    #[test]
    fn runs_are_recorded_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let runs = SqliteRuns::open(dir.path()).unwrap();
        block_on(async {
            let first = runs.start("node", "15-alpine", Trigger::Manual, Some("sha256:aa")).await.unwrap();
            runs.gate(&first, 0, &GateRecord { name: "policy".into(), kind: "policy".into(), result: "passed".into(), duration_ms: 3, log: "ok".into() }).await.unwrap();
            runs.append_log(&first, "copied").await.unwrap();
            let promoted = RunEnd { status: Status::Succeeded, promoted: Some("sha256:aa"), previous: None, unique_tag: Some("15-alpine-a1"), reason: None };
            runs.finish(&first, &promoted).await.unwrap();
            let second = runs.start("node", "15-alpine", Trigger::ImageUpdate, Some("sha256:bb")).await.unwrap();
            runs.finish(&second, &RunEnd::not_promoted(Status::Failed, "gate `policy` failed")).await.unwrap();
            let listed = runs.list(None, 10).await.unwrap();
            assert_eq!(listed.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), [second.as_str(), first.as_str()]);
            assert_eq!(runs.last_import("node", "15-alpine").await.unwrap().unwrap().run_id, second);
            assert_eq!(runs.promotions("node", "15-alpine").await.unwrap().len(), 1);
            assert!(!runs.rejected_by_gate(&second).await.unwrap(), "no gate failed in that run");
            runs.gate(&second, 0, &GateRecord { name: "policy".into(), kind: "policy".into(), result: "failed".into(), duration_ms: 1, log: String::new() }).await.unwrap();
            assert!(runs.rejected_by_gate(&second).await.unwrap());
            let (log, gates) = runs.logs(&first).await.unwrap();
            assert_eq!((log.as_str(), gates[0].result.as_str()), ("copied\n", "passed"));
        });
    }

    #[test]
    fn pages_filter_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let runs = SqliteRuns::open(dir.path()).unwrap();
        block_on(async {
            for n in 0..30 {
                let import = if n % 3 == 0 { "node" } else { "redis" };
                let id = runs.start(import, "1", if n % 2 == 0 { Trigger::Manual } else { Trigger::Timer }, None).await.unwrap();
                let status = if n % 5 == 0 { Status::Failed } else { Status::Succeeded };
                runs.finish(&id, &RunEnd::not_promoted(status, "x")).await.unwrap();
            }
            let all = RunFilter::default();
            let (page, total) = runs.page(&all, 0, 10).await.unwrap();
            assert_eq!((page.len(), total), (10, 30));
            let (last, _) = runs.page(&all, 25, 10).await.unwrap();
            assert_eq!(last.len(), 5);
            let node = RunFilter { import: Some("node".into()), ..Default::default() };
            assert_eq!(runs.page(&node, 0, 100).await.unwrap().1, 10);
            let failed_timer = RunFilter { status: Some("Failed".into()), trigger: Some("Timer".into()), ..Default::default() };
            assert_eq!(runs.page(&failed_timer, 0, 100).await.unwrap().1, 3, "n = 5, 15, 25");
            let visible = RunFilter { imports: Some(vec!["redis".into()]), ..Default::default() };
            assert_eq!(runs.page(&visible, 0, 100).await.unwrap().1, 20);
            let none = RunFilter { imports: Some(Vec::new()), ..Default::default() };
            assert_eq!(runs.page(&none, 0, 100).await.unwrap().1, 0);
        });
    }

    #[test]
    fn a_lease_is_held_until_released_renewed_or_its_holder_dies() {
        let dir = tempfile::tempdir().unwrap();
        let runs = SqliteRuns::open(dir.path()).unwrap();
        let other = SqliteRuns::open(dir.path()).unwrap();
        let hour = Duration::from_secs(3600);
        let me = this_holder();
        block_on(async {
            assert!(runs.lock("node", &me, hour).await.unwrap().is_ok());
            assert_eq!(other.lock("node", "elsewhere:1", hour).await.unwrap(), Err(me.clone()));
            assert!(runs.renew("node", &me, hour).await.unwrap());
            assert!(!other.renew("node", "elsewhere:1", hour).await.unwrap(), "only the holder renews");
            runs.unlock("node", &me).await.unwrap();
            assert!(other.lock("node", "elsewhere:1", hour).await.unwrap().is_ok());
            assert!(!runs.renew("node", &me, hour).await.unwrap(), "a released lease is not renewed");
            // A holder of this host whose process is gone loses the lease.
            let dead = format!("{}:{}", hostname(), u32::MAX);
            runs.unlock("node", "elsewhere:1").await.unwrap();
            assert!(runs.lock("node", &dead, hour).await.unwrap().is_ok());
            assert!(other.lock("node", &me, hour).await.unwrap().is_ok());
            // A lease that ran out is taken over, whoever holds it.
            assert!(runs.lock("node", "elsewhere:2", Duration::ZERO).await.unwrap().is_err(), "renewed this second");
        });
    }
}
