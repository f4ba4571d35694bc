//! Monthly budgets: a tenant with one may hold no more than it in a calendar month (UTC). A
//! submission is refused when what the tenant spent this month, what its waiting and running
//! jobs may still cost, and what the new job may cost at most would pass it. Work already
//! running goes on, unless the admin chose `stop_running`: then the leader cancels a tenant's
//! jobs once its month's spending reaches the budget (checked every [`ENFORCE_EVERY`]).
//!
//! A job's most is known only when it bounds its runtime, so a tenant with a budget gives
//! `max_runtime_s`. The check and the write of the new job are one step per tenant (a lock), so
//! concurrent submissions to one server cannot together pass the budget. Whether a tenant has a
//! budget is read at most once a second per process: one set on another replica applies within it.

use crate::AppState;
use crate::auth::{AdminCaller, Caller};
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::json::PathSegment;
use crate::routes::query_error;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a tenant's budget is kept (the settings table), by tenant id.
const BUDGET_PREFIX: &str = "budget.";
/// No budget is above this, in any currency.
const MAX_BUDGET: f64 = 1e12;

fn key(tenant_id: i64) -> String {
    format!("{BUDGET_PREFIX}{tenant_id}")
}

/// How long this process trusts what it read of a tenant's budget before asking the store again:
/// a budget set on another replica applies here within this; on this one, at once.
const BUDGET_FRESH: Duration = Duration::from_secs(1);

/// Per tenant: a lock that makes its check and its write one step, and its budget as read lately
/// (so that submissions of tenants without one cost no read of the store).
#[derive(Default)]
pub(crate) struct BudgetLocks {
    locks: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    known: Mutex<HashMap<i64, (Instant, Option<f64>)>>,
}

impl BudgetLocks {
    fn of(&self, tenant_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).entry(tenant_id).or_default().clone()
    }

    fn recent(&self, tenant_id: i64) -> Option<Option<f64>> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.get(&tenant_id).filter(|(at, _)| at.elapsed() < BUDGET_FRESH).map(|(_, b)| *b)
    }

    fn remember(&self, tenant_id: i64, budget: Option<f64>) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() > 100_000 {
            known.retain(|_, (at, _)| at.elapsed() < BUDGET_FRESH);
        }
        known.insert(tenant_id, (Instant::now(), budget));
    }
}

/// A budget as the settings table holds it: a bare amount (as first written), or JSON.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, Deserialize)]
struct Stored {
    monthly: f64,
    #[serde(default)]
    stop_running: bool,
}

fn parse_stored(text: &str) -> Option<Stored> {
    match text.trim().parse::<f64>() {
        Ok(monthly) => Some(Stored { monthly, stop_running: false }),
        Err(_) => serde_json::from_str(text).ok(),
    }
}

/// A tenant's budget as the store holds it now.
async fn stored_budget(st: &AppState, tenant_id: i64) -> Result<Option<Stored>, ApiError> {
    let budget = st.store.setting(&key(tenant_id)).await?.as_deref().and_then(parse_stored);
    st.budget_locks.remember(tenant_id, budget.map(|b| b.monthly));
    Ok(budget)
}

async fn monthly_budget(st: &AppState, tenant_id: i64) -> Result<Option<f64>, ApiError> {
    Ok(stored_budget(st, tenant_id).await?.map(|b| b.monthly))
}

/// How often the leader looks for tenants past a budget that stops running work.
pub(crate) const ENFORCE_EVERY: Duration = Duration::from_secs(10);

/// The leader's loop that cancels the jobs of tenants whose month's spending reached a budget
/// set with `stop_running`. Idempotent: a tenant past its budget has nothing left to cancel.
pub(crate) async fn enforce_loop(st: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = enforce(&st).await {
            tracing::warn!(error = %e, "budgets not enforced this round");
        }
    }
}

async fn enforce(st: &AppState) -> Result<(), ApiError> {
    let budgets = st.store.settings_with_prefix(BUDGET_PREFIX).await?;
    let stopping: Vec<(i64, Stored)> = budgets
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(BUDGET_PREFIX)?.parse::<i64>().ok()?, parse_stored(v)?)))
        .filter(|(_, b)| b.stop_running)
        .collect();
    if stopping.is_empty() {
        return Ok(());
    }
    let prices = crate::usage::prices_in_force(st).await?;
    for (tenant_id, budget) in stopping {
        let active = st.store.active_jobs_of(tenant_id).await?;
        if active.is_empty() {
            continue;
        }
        let s = standing(st, tenant_id, &prices).await?;
        if s.spent + 1e-6 < budget.monthly {
            continue;
        }
        let message = format!(
            "cancelled: the tenant's budget of {:.2} {} for {} is spent ({:.2})",
            budget.monthly, prices.currency, s.month, s.spent
        );
        let mut steps = Vec::with_capacity(active.len() * 2);
        for job in &active {
            let cancel = |from: Vec<store::JobState>, finished: bool| store::Transition {
                job_id: job.id,
                from,
                to: store::JobState::Cancelled,
                change: store::Change { finished, message: Some(message.clone()), ..Default::default() },
            };
            steps.push(cancel(vec![store::JobState::Assigned, store::JobState::Preempted], false));
            steps.push(cancel(vec![store::JobState::Pending, store::JobState::Scheduled], true));
        }
        let done = st.store.transitions(&steps, crate::now_ms()).await?;
        let mut cancelled = 0;
        for (job, pair) in active.iter().zip(done.chunks(2)) {
            if pair.contains(&true) {
                cancelled += 1;
                st.tell_scheduler(crate::scheduler::SchedEvent::Cancelled(job.id));
            }
        }
        if cancelled > 0 {
            st.job_changed();
            tracing::info!(
                tenant_id,
                jobs = cancelled,
                spent = s.spent,
                budget = budget.monthly,
                "budget spent: jobs cancelled"
            );
        }
    }
    Ok(())
}

/// The most `job` may cost: its GPUs at the dearest price it may pay (its model's, or the
/// dearest on the list when it names none), its CPUs, memory and its GPUs' board power for its
/// whole `max_runtime_s`. `None` when its runtime is not bounded.
fn most_cost(st: &AppState, job: &store::NewJob, prices: &api::Prices) -> Option<f64> {
    let hours = job.max_runtime_s? as f64 / 3600.0;
    let gpus = job.gpu_milli.map_or(job.gpus_per_node as f64, |m| m as f64 / 1000.0) * job.nodes as f64;
    let named = job.gpu_model.as_deref();
    let dearest =
        prices.gpu_hour.iter().filter(|(m, _)| named.is_none_or(|n| n.eq_ignore_ascii_case(m))).map(|(_, p)| *p);
    let gpu_price = dearest.fold(prices.gpu_hour_default, f64::max);
    let board_watts = st
        .fleet
        .gpu_models
        .iter()
        .filter(|m| named.is_none_or(|n| n.eq_ignore_ascii_case(&m.name)))
        .map(|m| m.board_power_watts)
        .fold(0.0, f64::max);
    // Energy passed through at the dearest hour's price, facility included.
    let passed = if prices.energy_pass_through { st.site_years.dearest_it_kwh_eur } else { 0.0 };
    let cost = gpus * hours * (gpu_price + board_watts / 1000.0 * (prices.energy_kwh + passed))
        + (job.cpu_milli * job.nodes) as f64 / 1000.0 * hours * prices.cpu_core_hour
        + (job.memory_mib * job.nodes) as f64 / 1024.0 * hours * prices.memory_gib_hour;
    Some(if job.deferrable { cost * (1.0 - prices.deferrable_discount) } else { cost })
}

/// Where a tenant stands against its budget this month.
struct Standing {
    month: String,
    spent: f64,
    held: f64,
}

async fn standing(st: &AppState, tenant_id: i64, prices: &api::Prices) -> Result<Standing, ApiError> {
    let now = crate::now_ms();
    let (y, m, _) = api::utc_date(now);
    let since = api::utc_month_start_ms(y, m);
    let runs = st.store.job_runs(Some(tenant_id), since, now.max(since + 1)).await?;
    let window = crate::usage::Window { since_ms: since, until_ms: now.max(since + 1), now_ms: now };
    // Priced hour by hour (energy passed through, heat credited), a month of long runs adds up:
    // off the async workers.
    let (st2, prices2) = (st.clone(), prices.clone());
    let spent_by_job = tokio::task::spawn_blocking(move || crate::usage::cost_by_job(&st2, &runs, window, &prices2))
        .await
        .map_err(|e| ApiError::Internal(format!("budget standing: {e}")))?;
    let spent = spent_by_job.values().sum();
    // What its active jobs may still cost: their most, less what their runs cost so far.
    let mut held = 0.0;
    for job in st.store.active_jobs_of(tenant_id).await? {
        let Some(most) = most_cost(st, &job.spec, prices) else { continue };
        held += (most - spent_by_job.get(&job.id).copied().unwrap_or(0.0)).max(0.0);
    }
    Ok(Standing { month: format!("{y:04}-{m:02}"), spent, held })
}

/// Checks that `job` fits its tenant's budget; the guard, held until the job is written, keeps
/// the tenant's other submissions waiting. `None` for a tenant without a budget.
pub(crate) async fn check(
    st: &AppState,
    tenant: &store::Tenant,
    job: &store::NewJob,
) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, ApiError> {
    let lately = match st.budget_locks.recent(tenant.id) {
        Some(b) => b,
        None => monthly_budget(st, tenant.id).await?,
    };
    if lately.is_none() {
        return Ok(None);
    }
    let guard = st.budget_locks.of(tenant.id).lock_owned().await;
    // A retry of a submission already taken is answered with its job: no new cost.
    if let Some(k) = &job.idempotency_key
        && st.store.job_id_by_idempotency_key(tenant.id, k).await?.is_some()
    {
        return Ok(Some(guard));
    }
    // Read again under the lock: the figure the check holds to is the store's.
    let Some(budget) = monthly_budget(st, tenant.id).await? else { return Ok(None) };
    let prices = crate::usage::prices_in_force(st).await?;
    let Some(most) = most_cost(st, job, &prices) else {
        return Err(ApiError::invalid(
            "max_runtime_s",
            format!("tenant '{}' has a monthly budget: give max_runtime_s, so the job's cost is bounded", tenant.name),
        ));
    };
    let s = standing(st, tenant.id, &prices).await?;
    // Sums of costs carry rounding: a job that fits to the cent is taken.
    if s.spent + s.held + most > budget + 1e-6 {
        let c = &prices.currency;
        return Err(ApiError::Forbidden(format!(
            "tenant '{}' has a budget of {budget:.2} {c} for {}: {:.2} {c} spent, {:.2} {c} held by its waiting and \
             running jobs, and this job may cost up to {most:.2} {c}; cancel work, or ask the admin to raise the budget",
            tenant.name, s.month, s.spent, s.held
        )));
    }
    Ok(Some(guard))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BudgetParams {
    tenant: Option<String>,
}

/// `GET /v1/budget`: the caller's budget and where it stands (the admin: `?tenant=`).
pub(crate) async fn get_budget(
    State(st): State<AppState>,
    caller: Caller,
    params: Result<Query<BudgetParams>, QueryRejection>,
) -> Result<Json<api::Budget>, ApiError> {
    let Query(params) = params.map_err(query_error)?;
    let tenant = match (caller, params.tenant) {
        (Caller::Tenant(t), None) => t,
        (Caller::Tenant(t), Some(name)) if name == t.name => t,
        (Caller::Tenant(_), Some(_)) => return Err(ApiError::Forbidden("a tenant sees its own budget only".into())),
        (Caller::Admin, None) => return Err(ApiError::invalid("tenant", "the admin names the tenant: ?tenant=NAME")),
        (Caller::Admin, Some(name)) => {
            st.store.tenant_by_name(&name).await?.ok_or_else(|| ApiError::NotFound(format!("no tenant '{name}'")))?
        }
    };
    budget_of(&st, &tenant).await.map(Json)
}

async fn budget_of(st: &AppState, tenant: &store::Tenant) -> Result<api::Budget, ApiError> {
    let prices = crate::usage::prices_in_force(st).await?;
    let stored = stored_budget(st, tenant.id).await?;
    let s = standing(st, tenant.id, &prices).await?;
    Ok(api::Budget {
        tenant: tenant.name.clone(),
        monthly: stored.map(|b| b.monthly),
        stop_running: stored.is_some_and(|b| b.stop_running),
        currency: prices.currency,
        month: s.month,
        spent: s.spent,
        held: s.held,
    })
}

/// `PUT /v1/tenants/{name}/budget` (admin): sets or removes a tenant's monthly budget.
pub(crate) async fn set_budget(
    State(st): State<AppState>,
    _admin: AdminCaller,
    PathSegment(name): PathSegment,
    ApiJson(body): ApiJson<api::BudgetUpdate>,
) -> Result<Json<api::Budget>, ApiError> {
    if let Some(b) = body.monthly
        && !(b.is_finite() && (0.0..=MAX_BUDGET).contains(&b))
    {
        return Err(ApiError::invalid("monthly", format!("an amount from 0 to {MAX_BUDGET}")));
    }
    if body.stop_running && body.monthly.is_none() {
        return Err(ApiError::invalid("stop_running", "stops work past a budget: give monthly too"));
    }
    let tenant =
        st.store.tenant_by_name(&name).await?.ok_or_else(|| ApiError::NotFound(format!("no tenant '{name}'")))?;
    let detail = serde_json::json!({"monthly": body.monthly, "stop_running": body.stop_running});
    let store = crate::routes::audited(&st, "budget.set", &name, detail);
    match body.monthly {
        // A bare amount unless it stops running work: what replicas of before read.
        Some(b) if !body.stop_running => store.set_setting(&key(tenant.id), &b.to_string()).await?,
        Some(b) => {
            let stored = Stored { monthly: b, stop_running: true };
            let text = serde_json::to_string(&stored).map_err(|e| ApiError::Internal(e.to_string()))?;
            store.set_setting(&key(tenant.id), &text).await?
        }
        None => {
            store.delete_setting(&key(tenant.id)).await?;
        }
    }
    st.budget_locks.remember(tenant.id, body.monthly);
    tracing::info!(tenant = %name, monthly = ?body.monthly, "budget set");
    budget_of(&st, &tenant).await.map(Json)
}
