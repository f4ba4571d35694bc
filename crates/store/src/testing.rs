//! Throwaway databases for tests: a fresh PostgreSQL database per test run, dropped afterwards.
//!
//! The server to use comes from `DROME_TEST_POSTGRES` (a URL without a database name, such as
//! `postgres://postgres@127.0.0.1:5432`); by default the local server on 127.0.0.1:5432 is tried
//! as `postgres`, then as `root`, through its `test` database.

use crate::{Result, StoreError};
use sqlx::AnyConnection;
use sqlx::Connection;

/// A PostgreSQL database made for one test; [`TempPostgres::drop_database`] removes it.
#[derive(Debug)]
pub struct TempPostgres {
    /// URL of the new database.
    pub url: String,
    admin_url: String,
    name: String,
}

fn servers() -> Vec<String> {
    match std::env::var("DROME_TEST_POSTGRES") {
        Ok(u) if !u.trim().is_empty() => vec![u.trim().trim_end_matches('/').to_string()],
        _ => vec!["postgres://postgres@127.0.0.1:5432".into(), "postgres://root@127.0.0.1:5432".into()],
    }
}

/// A unique database name from the clock and the process id.
fn unique_name() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("drome_test_{}_{}_{}", std::process::id(), nanos % 1_000_000_000_000, n)
}

impl TempPostgres {
    /// Creates a fresh database. Fails, naming what was tried, when no PostgreSQL answers.
    pub async fn create() -> Result<TempPostgres> {
        sqlx::any::install_default_drivers();
        let mut errors = Vec::new();
        for server in servers() {
            let admin_url = format!("{server}/test");
            match AnyConnection::connect(&admin_url).await {
                Ok(mut conn) => {
                    let name = unique_name();
                    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
                    conn.close().await?;
                    return Ok(TempPostgres { url: format!("{server}/{name}"), admin_url, name });
                }
                Err(e) => errors.push(format!("{admin_url}: {e}")),
            }
        }
        Err(StoreError::BadUrl(format!(
            "no PostgreSQL reachable for tests (is it running? check with `pg_isready -h 127.0.0.1`): {}",
            errors.join("; ")
        )))
    }

    /// Drops the database, closing whatever still uses it.
    pub async fn drop_database(self) -> Result<()> {
        let mut conn = AnyConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }
}
