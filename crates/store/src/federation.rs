//! A federation endpoint's record: which site each tenant's job went to and why, the tokens it
//! acts with at each site, and the jobs a lost site must drop when it answers again.
//!
//! Knows nothing about sites' APIs or HTTP: rows in, rows out.

use crate::{Result, Store, StoreError};
use sqlx::Row;
use sqlx::any::AnyRow;

/// A job the federation took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FedJob {
    pub id: i64,
    pub tenant_id: i64,
    pub name: String,
    /// The tenant's job as sent to the site, JSON.
    pub spec_json: String,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    /// The site it is at now.
    pub site: String,
    /// Its id at that site, once the site took it.
    pub site_job_id: Option<i64>,
    /// Why that site.
    pub reason: String,
    /// What the site last said of it ([`FED_FORWARDING`] before the site took it, [`FED_LOST`]
    /// once its site is declared lost while it ran).
    pub state: String,
    pub message: Option<String>,
    /// When its present site was let start it.
    pub granted_ms: Option<i64>,
    /// Earlier sites, JSON.
    pub moves_json: String,
    pub submitted_ms: i64,
    pub updated_ms: i64,
}

/// Recorded, not yet taken by its site.
pub const FED_FORWARDING: &str = "forwarding";
/// Its site was declared lost while it ran there: its end is unknown.
pub const FED_LOST: &str = "lost";

/// A job to record, with the site chosen for it.
#[derive(Clone, Debug)]
pub struct NewFedJob {
    pub tenant_id: i64,
    pub name: String,
    pub spec_json: String,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    pub site: String,
    pub reason: String,
}

/// What recording a job did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FedInserted {
    New(FedJob),
    /// The same request came before with this idempotency key: the job it made.
    Existing(FedJob),
}

/// A job moved off a site, to be dropped there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FedLeft {
    pub site_key: String,
    /// Its id at the site, when the site's answer was written before the move.
    pub site_job_id: Option<i64>,
    pub tenant_id: i64,
    pub fed_job_id: i64,
}

/// A site's answer about one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FedStateUpdate {
    pub id: i64,
    pub state: String,
    pub message: Option<String>,
}

/// A job moved off a site that stopped answering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FedMove {
    pub id: i64,
    /// The site it leaves, as recorded: the move is not done if it was moved meanwhile.
    pub from_site: String,
    /// The idempotency key it was sent to `from_site` with.
    pub from_key: String,
    pub to_site: String,
    pub reason: String,
    /// Every earlier site, this one included, JSON.
    pub moves_json: String,
}

const FED_COLUMNS: &str = "id, tenant_id, name, spec_json, idempotency_key, request_hash, site, site_job_id, reason, \
     state, message, moves_json, submitted_ms, updated_ms, granted_ms";

fn fed_job_of(r: &AnyRow) -> Result<FedJob> {
    Ok(FedJob {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        name: r.try_get(2)?,
        spec_json: r.try_get(3)?,
        idempotency_key: r.try_get(4)?,
        request_hash: r.try_get(5)?,
        site: r.try_get(6)?,
        site_job_id: r.try_get(7)?,
        reason: r.try_get(8)?,
        state: r.try_get(9)?,
        message: r.try_get(10)?,
        moves_json: r.try_get(11)?,
        submitted_ms: r.try_get(12)?,
        updated_ms: r.try_get(13)?,
        granted_ms: r.try_get(14)?,
    })
}

impl Store {
    /// Records jobs in one transaction, each new unless its tenant sent the same request with
    /// the same idempotency key before; the same key with another request is a conflict.
    pub async fn fed_insert_jobs(&self, jobs: &[NewFedJob], now_ms: i64) -> Result<Vec<Result<FedInserted>>> {
        let mut tx = self.write().await?;
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            if let Some(key) = &job.idempotency_key {
                let row = sqlx::query(&format!(
                    "SELECT {FED_COLUMNS} FROM fed_jobs WHERE tenant_id = $1 AND idempotency_key = $2"
                ))
                .bind(job.tenant_id)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = row {
                    let existing = fed_job_of(&row)?;
                    out.push(if existing.request_hash == job.request_hash {
                        Ok(FedInserted::Existing(existing))
                    } else {
                        Err(StoreError::Conflict { what: "idempotency key", name: key.clone() })
                    });
                    continue;
                }
            }
            let row = sqlx::query(&format!(
                "INSERT INTO fed_jobs (tenant_id, name, spec_json, idempotency_key, request_hash, site, reason, state, \
                 submitted_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING {FED_COLUMNS}"
            ))
            .bind(job.tenant_id)
            .bind(&job.name)
            .bind(&job.spec_json)
            .bind(&job.idempotency_key)
            .bind(&job.request_hash)
            .bind(&job.site)
            .bind(&job.reason)
            .bind(FED_FORWARDING)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await?;
            out.push(Ok(FedInserted::New(fed_job_of(&row)?)));
        }
        tx.commit().await?;
        Ok(out)
    }

    pub async fn fed_job(&self, tenant_id: i64, id: i64) -> Result<Option<FedJob>> {
        let row = sqlx::query(&format!("SELECT {FED_COLUMNS} FROM fed_jobs WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(fed_job_of).transpose()
    }

    /// A tenant's jobs, newest first, in `state` and below `before_id` when given.
    pub async fn fed_jobs(
        &self,
        tenant_id: i64,
        state: Option<&str>,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<FedJob>> {
        let mut sql = format!("SELECT {FED_COLUMNS} FROM fed_jobs WHERE tenant_id = $1");
        let mut n = 1;
        if state.is_some() {
            n += 1;
            sql.push_str(&format!(" AND state = ${n}"));
        }
        if before_id.is_some() {
            n += 1;
            sql.push_str(&format!(" AND id < ${n}"));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", n + 1));
        let mut q = sqlx::query(&sql).bind(tenant_id);
        if let Some(s) = state {
            q = q.bind(s);
        }
        if let Some(b) = before_id {
            q = q.bind(b);
        }
        let rows = q.bind(limit.max(0)).fetch_all(&self.reader).await?;
        rows.iter().map(fed_job_of).collect()
    }

    /// The jobs at `site` in any of `states`, oldest first.
    pub async fn fed_jobs_at(&self, site: &str, states: &[&str]) -> Result<Vec<FedJob>> {
        let mut out = Vec::new();
        for state in states {
            let rows =
                sqlx::query(&format!("SELECT {FED_COLUMNS} FROM fed_jobs WHERE site = $1 AND state = $2 ORDER BY id"))
                    .bind(site)
                    .bind(*state)
                    .fetch_all(&self.reader)
                    .await?;
            for r in &rows {
                out.push(fed_job_of(r)?);
            }
        }
        out.sort_by_key(|j| j.id);
        Ok(out)
    }

    /// Every job recorded but not yet taken by a site, oldest first.
    pub async fn fed_forwarding(&self, limit: i64) -> Result<Vec<FedJob>> {
        let rows = sqlx::query(&format!("SELECT {FED_COLUMNS} FROM fed_jobs WHERE state = $1 ORDER BY id LIMIT $2"))
            .bind(FED_FORWARDING)
            .bind(limit)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(fed_job_of).collect()
    }

    /// Sites took these jobs: (job, site, its id there, its state there). A job moved
    /// meanwhile to another site is left as it is.
    pub async fn fed_set_forwarded(&self, taken: &[(i64, String, i64, String)], now_ms: i64) -> Result<()> {
        let mut tx = self.write().await?;
        for (id, site, site_job_id, state) in taken {
            sqlx::query(
                "UPDATE fed_jobs SET site_job_id = $1, state = $2, updated_ms = $3 WHERE id = $4 AND site = $5",
            )
            .bind(site_job_id)
            .bind(state)
            .bind(now_ms)
            .bind(id)
            .bind(site)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What sites said of their jobs; only changes are written.
    pub async fn fed_set_states(&self, updates: &[FedStateUpdate], now_ms: i64) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for u in updates {
            sqlx::query("UPDATE fed_jobs SET state = $1, message = $2, updated_ms = $3 WHERE id = $4")
                .bind(&u.state)
                .bind(&u.message)
                .bind(now_ms)
                .bind(u.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Refuses a recorded job that no site would take (the site's own validation said why):
    /// the record goes, as if it had never been acknowledged (it was not).
    pub async fn fed_forget(&self, id: i64) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM fed_jobs WHERE id = $1 AND state = $2")
            .bind(id)
            .bind(FED_FORWARDING)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves jobs off a site in one transaction: each goes back to forwarding, to its new site;
    /// each the old site had taken is noted to be cancelled there when it answers again. A job
    /// no longer at `from_site` is left alone. Returns which moved.
    pub async fn fed_move(&self, moves: &[FedMove], now_ms: i64) -> Result<Vec<bool>> {
        let mut tx = self.write().await?;
        let mut out = Vec::with_capacity(moves.len());
        for m in moves {
            let row = sqlx::query("SELECT site_job_id, tenant_id FROM fed_jobs WHERE id = $1 AND site = $2")
                .bind(m.id)
                .bind(&m.from_site)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                out.push(false);
                continue;
            };
            let site_job_id: Option<i64> = row.try_get(0)?;
            let tenant_id: i64 = row.try_get(1)?;
            // Noted even when no id came back: the site may have taken it all the same.
            sqlx::query(
                "INSERT INTO fed_left (site, site_key, site_job_id, tenant_id, fed_job_id, left_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (site, site_key) DO NOTHING",
            )
            .bind(&m.from_site)
            .bind(&m.from_key)
            .bind(site_job_id)
            .bind(tenant_id)
            .bind(m.id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE fed_jobs SET site = $1, site_job_id = NULL, reason = $2, state = $3, message = NULL, \
                 moves_json = $4, updated_ms = $5, granted_ms = NULL WHERE id = $6",
            )
            .bind(&m.to_site)
            .bind(&m.reason)
            .bind(FED_FORWARDING)
            .bind(&m.moves_json)
            .bind(now_ms)
            .bind(m.id)
            .execute(&mut *tx)
            .await?;
            out.push(true);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Notes that `site` may start these of its jobs (its ids), in one transaction, before it is
    /// told so: from then on the federation counts them as possibly started there. Returns the
    /// ids that are the federation's jobs at that site (others are left out, not granted).
    pub async fn fed_grant(&self, site: &str, site_job_ids: &[i64], now_ms: i64) -> Result<Vec<i64>> {
        let mut tx = self.write().await?;
        let mut granted = Vec::with_capacity(site_job_ids.len());
        for id in site_job_ids {
            let row = sqlx::query("SELECT granted_ms FROM fed_jobs WHERE site = $1 AND site_job_id = $2")
                .bind(site)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else { continue };
            let already: Option<i64> = row.try_get(0)?;
            if already.is_none() {
                sqlx::query("UPDATE fed_jobs SET granted_ms = $1 WHERE site = $2 AND site_job_id = $3")
                    .bind(now_ms)
                    .bind(site)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            granted.push(*id);
        }
        tx.commit().await?;
        Ok(granted)
    }

    /// The jobs moved off `site` that it has not been told to drop.
    pub async fn fed_left_at(&self, site: &str) -> Result<Vec<FedLeft>> {
        let rows = sqlx::query(
            "SELECT site_key, site_job_id, tenant_id, fed_job_id FROM fed_left WHERE site = $1 AND cancelled_ms IS NULL \
             ORDER BY fed_job_id",
        )
        .bind(site)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FedLeft {
                    site_key: r.try_get(0)?,
                    site_job_id: r.try_get(1)?,
                    tenant_id: r.try_get(2)?,
                    fed_job_id: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// `site` dropped these jobs (by the keys they were sent with).
    pub async fn fed_left_cancelled(&self, site: &str, site_keys: &[String], now_ms: i64) -> Result<()> {
        let mut tx = self.write().await?;
        for key in site_keys {
            sqlx::query("UPDATE fed_left SET cancelled_ms = $1 WHERE site = $2 AND site_key = $3")
                .bind(now_ms)
                .bind(site)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The token the federation acts with as `tenant_id` at `site`.
    pub async fn fed_site_token(&self, tenant_id: i64, site: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT token FROM fed_site_tokens WHERE tenant_id = $1 AND site = $2")
            .bind(tenant_id)
            .bind(site)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map(|r| r.try_get::<String, _>(0)).transpose()?)
    }

    pub async fn fed_set_site_token(&self, tenant_id: i64, site: &str, token: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO fed_site_tokens (tenant_id, site, token) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, site) DO UPDATE SET token = excluded.token",
        )
        .bind(tenant_id)
        .bind(site)
        .bind(token)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
