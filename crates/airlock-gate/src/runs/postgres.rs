//! The run store in PostgreSQL (`state: postgres://…`): several `airlock watch` nodes on
//! different machines share one run history and one set of import leases.
//!
//! Leases are rows (`airlock_leases`), taken and renewed with one conditional upsert each and
//! timed by the database's clock, so the nodes' clocks need not agree. Session advisory locks
//! are not used: they belong to a connection, and a pooler (PgBouncer in transaction mode)
//! hands connections to other clients, so they leak or vanish. Every statement stands alone or
//! runs in its own transaction, which poolers in any mode pass through.

use std::sync::Arc;
use std::time::Duration;

use airlock_oci::time::now;
use tokio::sync::Mutex;
use tokio_postgres::{Client, Row};

use super::{log_line, random_prefix, run_id, DbError, GateRecord, Result, Run, RunEnd, RunFilter, RunStore, Trigger, COLUMNS};

/// How long connecting may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The schema, made once by whichever node comes first (a transaction-scoped advisory lock
/// keeps two nodes starting together from racing on `CREATE TABLE`; it ends with the
/// transaction, so poolers are no concern).
const SCHEMA: &str = "
    SELECT pg_advisory_xact_lock(7262638473627);
    CREATE TABLE IF NOT EXISTS airlock_runs (
        sequence BIGSERIAL PRIMARY KEY,
        run_id TEXT UNIQUE,
        import TEXT NOT NULL,
        tag TEXT NOT NULL,
        platform TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        trigger TEXT NOT NULL,
        started BIGINT NOT NULL,
        duration_ms BIGINT,
        upstream_digest TEXT,
        promoted_digest TEXT,
        previous_digest TEXT,
        unique_tag TEXT,
        reason TEXT,
        log TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX IF NOT EXISTS airlock_runs_by_import ON airlock_runs (import, tag, sequence);
    CREATE TABLE IF NOT EXISTS airlock_gates (
        run_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        result TEXT NOT NULL,
        duration_ms BIGINT NOT NULL,
        log TEXT NOT NULL,
        PRIMARY KEY (run_id, position)
    );
    CREATE TABLE IF NOT EXISTS airlock_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS airlock_schedule (
        import TEXT PRIMARY KEY,
        next_look BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS airlock_leases (
        import TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires TIMESTAMPTZ NOT NULL
    );";

/// `postgres://user:secret@host/db` → `postgres://user:******@host/db` (and a `password=`
/// parameter's value), for messages.
pub(super) fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "******".to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:******@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let parameters: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=******"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", parameters.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// The connected database. One connection, reopened when it breaks; statements of this
/// process take turns on it (a watch node's database traffic is a few statements per run).
pub(super) struct PostgresRuns {
    config: tokio_postgres::Config,
    place: String,
    client: Mutex<Option<Arc<Client>>>,
    prefix: String,
}

fn run(row: &Row) -> Run {
    let unsigned = |i: usize| row.get::<_, i64>(i).max(0) as u64;
    Run {
        run_id: row.get(0),
        import: row.get(1),
        tag: row.get(2),
        platform: row.get(3),
        status: row.get(4),
        trigger: row.get(5),
        started: unsigned(6),
        duration_ms: row.get::<_, Option<i64>>(7).map(|d| d.max(0) as u64),
        upstream_digest: row.get(8),
        promoted_digest: row.get(9),
        previous_digest: row.get(10),
        unique_tag: row.get(11),
        reason: row.get(12),
    }
}

/// A lease's length as the database's interval.
fn seconds(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

impl PostgresRuns {
    /// Connects to `url` (its password, if it has none, from the variable `password_env` or
    /// `PGPASSWORD`) and makes the schema if it is missing.
    pub(super) async fn connect(url: &str, password_env: Option<&str>) -> Result<PostgresRuns> {
        let place = without_password(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| DbError::new(&place, format!("not a PostgreSQL URL: {e}")))?;
        if config.get_password().is_none() {
            let variable = password_env.unwrap_or("PGPASSWORD");
            match std::env::var(variable) {
                Ok(password) => {
                    config.password(password);
                }
                Err(_) if password_env.is_some() => {
                    return Err(DbError::new(&place, format!("`state_password_env` names `{variable}`, which is not set: set it to the database password")));
                }
                Err(_) => {}
            }
        }
        if config.get_application_name().is_none() {
            config.application_name("airlock");
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        let store = PostgresRuns { config, place, client: Mutex::new(None), prefix: String::new() };
        let client = store.client().await?;
        client.batch_execute(&format!("BEGIN; {SCHEMA} COMMIT;")).await.map_err(|e| store.fail(e))?;
        client
            .execute("INSERT INTO airlock_meta (key, value) VALUES ('run_id_prefix', $1) ON CONFLICT (key) DO NOTHING", &[&random_prefix()])
            .await
            .map_err(|e| store.fail(e))?;
        let prefix: String = client.query_one("SELECT value FROM airlock_meta WHERE key = 'run_id_prefix'", &[]).await.map_err(|e| store.fail(e))?.get(0);
        Ok(PostgresRuns { prefix, ..store })
    }

    fn fail(&self, error: tokio_postgres::Error) -> DbError {
        // The driver's own text ("db error") hides the server's message: show that instead.
        let message = match error.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => match std::error::Error::source(&error) {
                Some(cause) => format!("{error}: {cause}"),
                None => error.to_string(),
            },
        };
        DbError::new(&self.place, message)
    }

    /// The connection, made (again) when there is none or it broke. TLS when the server
    /// offers it (`sslmode=prefer`, the default) or the URL asks for it (`sslmode=require`),
    /// with the same roots as airlock's registry clients.
    async fn client(&self) -> Result<Arc<Client>> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(airlock_store::remote::tls::client_config(Vec::new()));
        let (client, connection) = self.config.connect(tls).await.map_err(|e| self.fail(e))?;
        let place = self.place.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("run database `{place}`: connection lost: {e}");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<u64> {
        self.client().await?.execute(sql, params).await.map_err(|e| self.fail(e))
    }

    async fn query(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Vec<Row>> {
        self.client().await?.query(sql, params).await.map_err(|e| self.fail(e))
    }

    async fn query_opt(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Option<Row>> {
        self.client().await?.query_opt(sql, params).await.map_err(|e| self.fail(e))
    }
}

#[async_trait::async_trait]
impl RunStore for PostgresRuns {
    async fn lock(&self, import: &str, holder: &str, lease: Duration) -> Result<Result<(), String>> {
        // One statement: insert, or take over a lease that ran out or is already ours. Two
        // nodes racing both reach the row lock of the upsert; the second sees the first's
        // fresh lease and gets no row back.
        let taken = self
            .query_opt(
                "INSERT INTO airlock_leases (import, holder, expires) VALUES ($1, $2, now() + make_interval(secs => $3))
                 ON CONFLICT (import) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires
                 WHERE airlock_leases.expires < now() OR airlock_leases.holder = EXCLUDED.holder
                 RETURNING holder",
                &[&import, &holder, &seconds(lease)],
            )
            .await?;
        if taken.is_some() {
            return Ok(Ok(()));
        }
        let other = self.query_opt("SELECT holder FROM airlock_leases WHERE import = $1", &[&import]).await?;
        Ok(Err(other.map(|row| row.get(0)).unwrap_or_else(|| "another node (it just let go: try again)".into())))
    }

    async fn renew(&self, import: &str, holder: &str, lease: Duration) -> Result<bool> {
        let renewed = self
            .execute("UPDATE airlock_leases SET expires = now() + make_interval(secs => $3) WHERE import = $1 AND holder = $2", &[&import, &holder, &seconds(lease)])
            .await?;
        Ok(renewed == 1)
    }

    async fn unlock(&self, import: &str, holder: &str) -> Result<()> {
        self.execute("DELETE FROM airlock_leases WHERE import = $1 AND holder = $2", &[&import, &holder]).await.map(drop)
    }

    async fn start(&self, import: &str, tag: &str, trigger: Trigger, upstream: Option<&str>) -> Result<String> {
        // The sequence is drawn first so that the row is inserted with its id: no reader ever
        // sees a run without one.
        let sequence: i64 = self
            .query_opt("SELECT nextval(pg_get_serial_sequence('airlock_runs', 'sequence'))", &[])
            .await?
            .map(|row| row.get(0))
            .ok_or_else(|| DbError::new(&self.place, "no sequence number for the new run"))?;
        let id = run_id(&self.prefix, sequence);
        self.execute(
            "INSERT INTO airlock_runs (sequence, run_id, import, tag, status, trigger, started, upstream_digest) VALUES ($1, $2, $3, $4, 'Running', $5, $6, $7)",
            &[&sequence, &id, &import, &tag, &trigger.as_str(), &(now() as i64), &upstream],
        )
        .await?;
        Ok(id)
    }

    async fn set_platform(&self, run_id: &str, platform: &str) -> Result<()> {
        self.execute("UPDATE airlock_runs SET platform = $1 WHERE run_id = $2", &[&platform, &run_id]).await.map(drop)
    }

    async fn append_log(&self, run_id: &str, text: &str) -> Result<()> {
        self.execute("UPDATE airlock_runs SET log = log || $1 WHERE run_id = $2", &[&log_line(text), &run_id]).await.map(drop)
    }

    async fn gate(&self, run_id: &str, position: usize, record: &GateRecord) -> Result<()> {
        self.execute(
            "INSERT INTO airlock_gates (run_id, position, name, kind, result, duration_ms, log) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (run_id, position) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind, result = EXCLUDED.result,
                 duration_ms = EXCLUDED.duration_ms, log = EXCLUDED.log",
            &[&run_id, &(position as i32), &record.name, &record.kind, &record.result, &(record.duration_ms as i64), &record.log],
        )
        .await
        .map(drop)
    }

    async fn finish(&self, run_id: &str, end: &RunEnd<'_>) -> Result<()> {
        self.execute(
            "UPDATE airlock_runs SET status = $1, duration_ms = GREATEST($2 - started, 0) * 1000, promoted_digest = $3, previous_digest = $4,
                 unique_tag = $5, reason = $6 WHERE run_id = $7",
            &[&end.status.as_str(), &(now() as i64), &end.promoted, &end.previous, &end.unique_tag, &end.reason, &run_id],
        )
        .await
        .map(drop)
    }

    async fn set_duration(&self, run_id: &str, duration: Duration) -> Result<()> {
        self.execute("UPDATE airlock_runs SET duration_ms = $1 WHERE run_id = $2", &[&(duration.as_millis() as i64), &run_id]).await.map(drop)
    }

    async fn list(&self, import: Option<&str>, limit: usize) -> Result<Vec<Run>> {
        let rows = self
            .query(
                &format!("SELECT {COLUMNS} FROM airlock_runs WHERE ($1::TEXT IS NULL OR import = $1) ORDER BY sequence DESC LIMIT $2"),
                &[&import, &(limit.min(i64::MAX as usize) as i64)],
            )
            .await?;
        Ok(rows.iter().map(run).collect())
    }

    async fn get(&self, run_id: &str) -> Result<Option<Run>> {
        Ok(self.query_opt(&format!("SELECT {COLUMNS} FROM airlock_runs WHERE run_id = $1"), &[&run_id]).await?.as_ref().map(run))
    }

    async fn logs(&self, run_id: &str) -> Result<(String, Vec<GateRecord>)> {
        let log = self.query_opt("SELECT log FROM airlock_runs WHERE run_id = $1", &[&run_id]).await?.map(|row| row.get(0)).unwrap_or_default();
        let gates = self
            .query("SELECT name, kind, result, duration_ms, log FROM airlock_gates WHERE run_id = $1 ORDER BY position", &[&run_id])
            .await?
            .iter()
            .map(|row| GateRecord { name: row.get(0), kind: row.get(1), result: row.get(2), duration_ms: row.get::<_, i64>(3).max(0) as u64, log: row.get(4) })
            .collect();
        Ok((log, gates))
    }

    async fn last_import(&self, import: &str, tag: &str) -> Result<Option<Run>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM airlock_runs WHERE import = $1 AND tag = $2 AND trigger != 'Rollback' AND status != 'Running' ORDER BY sequence DESC LIMIT 1"
        );
        Ok(self.query_opt(&sql, &[&import, &tag]).await?.as_ref().map(run))
    }

    async fn rejected_by_gate(&self, run_id: &str) -> Result<bool> {
        let row = self.query_opt("SELECT EXISTS (SELECT 1 FROM airlock_gates WHERE run_id = $1 AND result = 'failed')", &[&run_id]).await?;
        Ok(row.map(|row| row.get(0)).unwrap_or(false))
    }

    async fn promotions(&self, import: &str, tag: &str) -> Result<Vec<Run>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM airlock_runs WHERE import = $1 AND tag = $2 AND status = 'Succeeded' AND promoted_digest IS NOT NULL ORDER BY sequence DESC"
        );
        Ok(self.query(&sql, &[&import, &tag]).await?.iter().map(run).collect())
    }

    async fn reap(&self, import: &str, tag: &str, reason: &str) -> Result<usize> {
        let reaped = self
            .execute("UPDATE airlock_runs SET status = 'Error', reason = $1 WHERE import = $2 AND tag = $3 AND status = 'Running'", &[&reason, &import, &tag])
            .await?;
        Ok(reaped as usize)
    }

    async fn ping(&self) -> Result<()> {
        self.query_opt("SELECT 1", &[]).await.map(drop)
    }

    async fn import_names(&self) -> Result<Vec<String>> {
        Ok(self.query("SELECT DISTINCT import FROM airlock_runs ORDER BY import", &[]).await?.iter().map(|row| row.get(0)).collect())
    }

    async fn set_next_look(&self, import: &str, at: u64) -> Result<()> {
        self.execute(
            "INSERT INTO airlock_schedule (import, next_look) VALUES ($1, $2) ON CONFLICT (import) DO UPDATE SET next_look = EXCLUDED.next_look",
            &[&import, &(at as i64)],
        )
        .await
        .map(drop)
    }

    async fn next_looks(&self) -> Result<std::collections::HashMap<String, u64>> {
        let rows = self.query("SELECT import, next_look FROM airlock_schedule", &[]).await?;
        Ok(rows.iter().map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1).max(0) as u64)).collect())
    }

    async fn page(&self, filter: &RunFilter, offset: usize, limit: usize) -> Result<(Vec<Run>, usize)> {
        let (conditions, values) = filter.conditions('$', 1);
        let n = values.len();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let total: i64 = self.query_opt(&format!("SELECT COUNT(*) FROM airlock_runs WHERE {conditions}"), &params).await?.map(|row| row.get(0)).unwrap_or(0);
        let (limit, offset) = (limit as i64, offset as i64);
        params.push(&limit);
        params.push(&offset);
        let sql = format!("SELECT {COLUMNS} FROM airlock_runs WHERE {conditions} ORDER BY sequence DESC LIMIT ${} OFFSET ${}", n + 1, n + 2);
        let rows = self.query(&sql, &params).await?;
        Ok((rows.iter().map(run).collect(), total.max(0) as usize))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_leave_urls_for_messages() {
        assert_eq!(super::without_password("postgres://airlock:pw@db:5432/airlock"), "postgres://airlock:******@db:5432/airlock");
        assert_eq!(super::without_password("postgres://airlock@db/airlock"), "postgres://airlock@db/airlock");
        assert_eq!(super::without_password("postgres://db/airlock?sslmode=require&password=x"), "postgres://db/airlock?sslmode=require&password=******");
        assert_eq!(super::without_password("host=db password=x"), "******", "a key-value string is never shown");
    }
}
