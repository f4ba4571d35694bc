//! `GET /v1/usage`: what runs used within a window, read from the store's run records and
//! grouped by tenant, job, day, month or GPU model.
//!
//! The sums are made here from durable rows (one per run, opened by its start and closed as it
//! leaves `running`, both in the transitions' own transactions), so they hold across restarts,
//! agent losses and takeovers: nothing is added up in memory that a crash could count twice.

use crate::AppState;
use crate::auth::AdminCaller;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::routes::query_error;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use std::collections::HashMap;

const HOUR_MS: f64 = 3_600_000.0;
const DAY_MS: i64 = 86_400_000;
/// The window when `since_ms` is not given: 30 days before its end.
const DEFAULT_WINDOW_MS: i64 = 30 * DAY_MS;
/// The longest window a report covers (rows by day stay a few thousand).
const MAX_WINDOW_MS: i64 = 3_660 * DAY_MS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageParams {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    /// Read as text, so that a wrong value is named as this parameter's.
    by: Option<String>,
    tenant: Option<String>,
}

pub(crate) async fn usage(
    State(st): State<AppState>,
    caller: Caller,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<api::UsageReport>, ApiError> {
    let Query(params) = params.map_err(query_error)?;
    let now = crate::now_ms();
    let (since, until) = window_of(params.since_ms, params.until_ms, now, DEFAULT_WINDOW_MS)?;
    if until - since > MAX_WINDOW_MS {
        return Err(ApiError::invalid("since_ms", "a window of at most 3,660 days"));
    }
    let names: HashMap<i64, String> = st.store.tenants().await?.into_iter().map(|t| (t.id, t.name)).collect();
    let tenant_id = tenant_filter(&st, &caller, params.tenant.as_deref()).await?;
    let runs = st.store.job_runs(tenant_id, since, until).await?;
    let prices = prices_in_force(&st).await?;
    let by = match params.by.as_deref() {
        None => api::UsageBy::Tenant,
        Some(text) => text.parse::<api::UsageBy>().map_err(|why| ApiError::invalid("by", why))?,
    };
    let window = Window { since_ms: since, until_ms: until, now_ms: now };
    // Hours of many long runs add up: the sums run beside the server's request threads.
    let report = tokio::task::spawn_blocking(move || {
        let model_of = |node: &str| node_facts(&st, node);
        let hour_of = |node: &str, at_ms: i64| hour_figures_of(&st, node, at_ms);
        report(&runs, by, window, &names, &prices, model_of, Some(hour_of))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("usage report: {e}")))?;
    Ok(Json(report))
}

/// A report's window from its query: `until_ms` (now) and `since_ms` (`default_ms` before it).
fn window_of(since_ms: Option<i64>, until_ms: Option<i64>, now: i64, default_ms: i64) -> Result<(i64, i64), ApiError> {
    let until = until_ms.unwrap_or(now);
    let since = since_ms.unwrap_or(until.saturating_sub(default_ms).max(0));
    if !(0..=i64::MAX / 2).contains(&until) {
        return Err(ApiError::invalid("until_ms", "Unix milliseconds, 0 or more"));
    }
    if since < 0 || since >= until {
        return Err(ApiError::invalid("since_ms", "Unix milliseconds, 0 or more and before until_ms"));
    }
    Ok((since, until))
}

/// Whose runs a report covers: a tenant's own (never another's), or for the admin everyone's or
/// the named tenant's.
async fn tenant_filter(st: &AppState, caller: &Caller, tenant: Option<&str>) -> Result<Option<i64>, ApiError> {
    Ok(match (caller, tenant) {
        (Caller::Tenant(t), None) => Some(t.id),
        (Caller::Tenant(t), Some(name)) if name == t.name => Some(t.id),
        (Caller::Tenant(_), Some(_)) => {
            return Err(ApiError::Forbidden("a tenant sees its own usage only".into()));
        }
        (Caller::Admin, None) => None,
        (Caller::Admin, Some(name)) => Some(
            st.store.tenant_by_name(name).await?.ok_or_else(|| ApiError::NotFound(format!("no tenant '{name}'")))?.id,
        ),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryParams {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    tenant: Option<String>,
    limit: Option<i64>,
    after_id: Option<i64>,
}

/// The history's window when `since_ms` is not given: 7 days before its end.
const DEFAULT_HISTORY_MS: i64 = 7 * DAY_MS;
const DEFAULT_HISTORY_LIMIT: i64 = 1_000;
const MAX_HISTORY_LIMIT: i64 = 10_000;

/// `GET /v1/history`: jobs that finished in a window, with how they ended and what they cost.
pub(crate) async fn history(
    State(st): State<AppState>,
    caller: Caller,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<api::History>, ApiError> {
    let Query(params) = params.map_err(query_error)?;
    let now = crate::now_ms();
    let (since, until) = window_of(params.since_ms, params.until_ms, now, DEFAULT_HISTORY_MS)?;
    let limit = params.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("1 to {MAX_HISTORY_LIMIT}")));
    }
    let tenant_id = tenant_filter(&st, &caller, params.tenant.as_deref()).await?;
    let after_id = params.after_id.unwrap_or(i64::MIN);
    let mut jobs = st.store.finished_jobs(tenant_id, since, until, after_id, limit + 1).await?;
    let truncated = jobs.len() as i64 > limit;
    jobs.truncate(limit as usize);
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    let runs = st.store.runs_of_jobs(&ids).await?;
    let names: HashMap<i64, String> = st.store.tenants().await?.into_iter().map(|t| (t.id, t.name)).collect();
    let prices = prices_in_force(&st).await?;
    let currency = prices.currency.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let first = runs.iter().map(|r| r.started_ms).min().unwrap_or(since).min(since);
        let window = Window { since_ms: first, until_ms: now.max(until) + 1, now_ms: now };
        let per_job = job_rows(&st, &runs, window, &prices);
        history_rows(&jobs, &runs, &per_job, &names)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("history: {e}")))?;
    Ok(Json(api::History { since_ms: since, until_ms: until, currency, rows, truncated }))
}

/// The history's rows of `jobs`, from their runs and each job's usage row.
fn history_rows(
    jobs: &[store::Job],
    runs: &[store::JobRun],
    per_job: &HashMap<i64, api::UsageRow>,
    names: &HashMap<i64, String>,
) -> Vec<api::HistoryRow> {
    let mut by_job: HashMap<i64, Vec<&store::JobRun>> = HashMap::new();
    for r in runs {
        by_job.entry(r.job_id).or_default().push(r);
    }
    jobs.iter()
        .map(|job| {
            let mine = by_job.get(&job.id).map(Vec::as_slice).unwrap_or_default();
            let usage = per_job.get(&job.id);
            let finished = job.finished_ms.unwrap_or(job.submitted_ms);
            let elapsed_ms: i64 = mine.iter().map(|r| (r.ended_ms.unwrap_or(finished) - r.started_ms).max(0)).sum();
            let last_placement =
                mine.last().and_then(|r| r.placement_json.as_deref()).or(job.placement_json.as_deref());
            let node_list = last_placement
                .and_then(|p| crate::convert::decode_members(p).ok())
                .map(|ms| ms.into_iter().map(|m| m.node).collect())
                .unwrap_or_default();
            let gpus = match job.spec.gpu_milli {
                Some(m) => m as f64 / 1000.0,
                None => (job.spec.gpus_per_node * job.spec.nodes) as f64,
            };
            api::HistoryRow {
                job_id: job.id,
                name: job.spec.name.clone(),
                tenant: names.get(&job.spec.tenant_id).cloned().unwrap_or_else(|| job.spec.tenant_id.to_string()),
                state: crate::convert::state_to_api(job.state),
                exit_code: job.exit_code,
                message: job.message.clone(),
                submitted_ms: job.submitted_ms,
                started_ms: mine.first().map(|r| r.started_ms),
                finished_ms: finished,
                runs: mine.len() as u64,
                elapsed_s: elapsed_ms as f64 / 1000.0,
                nodes: u32::try_from(job.spec.nodes).unwrap_or(0),
                gpus,
                node_list,
                gpu_hours: usage.map_or(0.0, |u| u.gpu_hours),
                energy_kwh: usage.map_or(0.0, |u| u.energy_kwh_measured + u.energy_kwh_estimated),
                cost: usage.map_or(0.0, |u| u.cost),
            }
        })
        .collect()
}

/// Where the price list is kept (the settings table, as JSON).
const PRICES_KEY: &str = "prices";
/// The most GPU models a price list names.
const MAX_PRICED_MODELS: usize = 256;
/// No figure of a price list is above this (per hour or kWh).
const MAX_PRICE: f64 = 1e6;

/// The price list in force: the admin's, or all zeros in euros.
pub(crate) async fn prices_in_force(st: &AppState) -> Result<api::Prices, ApiError> {
    let stored = st.store.setting(PRICES_KEY).await?;
    Ok(stored.and_then(|v| serde_json::from_str(&v).ok()).unwrap_or_default())
}

pub(crate) async fn get_prices(State(st): State<AppState>, _caller: Caller) -> Result<Json<api::Prices>, ApiError> {
    Ok(Json(prices_in_force(&st).await?))
}

pub(crate) async fn set_prices(
    State(st): State<AppState>,
    _admin: AdminCaller,
    ApiJson(prices): ApiJson<api::Prices>,
) -> Result<Json<api::Prices>, ApiError> {
    check_prices(&prices)?;
    let json = serde_json::to_string(&prices).map_err(|e| ApiError::Internal(e.to_string()))?;
    let store = crate::routes::audited(&st, "prices.set", "prices", serde_json::from_str(&json).unwrap_or_default());
    store.set_setting(PRICES_KEY, &json).await?;
    tracing::info!(currency = %prices.currency, models = prices.gpu_hour.len(), "price list set");
    Ok(Json(prices))
}

fn check_prices(p: &api::Prices) -> Result<(), ApiError> {
    if p.currency.len() != 3 || !p.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::invalid("currency", "three capital letters (EUR)"));
    }
    let price = |field: &str, v: f64| {
        if v.is_finite() && (0.0..=MAX_PRICE).contains(&v) {
            Ok(())
        } else {
            Err(ApiError::invalid(field, format!("a price from 0 to {MAX_PRICE}")))
        }
    };
    price("gpu_hour_default", p.gpu_hour_default)?;
    price("cpu_core_hour", p.cpu_core_hour)?;
    price("memory_gib_hour", p.memory_gib_hour)?;
    price("energy_kwh", p.energy_kwh)?;
    if !(p.deferrable_discount.is_finite() && (0.0..=1.0).contains(&p.deferrable_discount)) {
        return Err(ApiError::invalid("deferrable_discount", "a share from 0 to 1"));
    }
    if !(p.heat_credit_share.is_finite() && (0.0..=1.0).contains(&p.heat_credit_share)) {
        return Err(ApiError::invalid("heat_credit_share", "a share from 0 to 1"));
    }
    // The grid's and the heat network's prices are in euros.
    if p.currency != "EUR" {
        if p.energy_pass_through {
            return Err(ApiError::invalid("energy_pass_through", "the grid's prices are in EUR: set currency EUR"));
        }
        if p.heat_credit_share > 0.0 {
            return Err(ApiError::invalid("heat_credit_share", "the heat network pays in EUR: set currency EUR"));
        }
    }
    if p.gpu_hour.len() > MAX_PRICED_MODELS {
        return Err(ApiError::invalid("gpu_hour", format!("at most {MAX_PRICED_MODELS} GPU models")));
    }
    for (model, &v) in &p.gpu_hour {
        if model.is_empty() || model.len() > 64 || model.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "gpu_hour",
                format!("'{model}' is not a GPU model name (1 to 64 characters)"),
            ));
        }
        price(&format!("gpu_hour.{model}"), v)?;
    }
    Ok(())
}

/// What each job's runs in `runs` cost within `window`, by job id.
pub(crate) fn cost_by_job(
    st: &AppState,
    runs: &[store::JobRun],
    window: Window,
    prices: &api::Prices,
) -> HashMap<i64, f64> {
    job_rows(st, runs, window, prices).into_iter().map(|(id, row)| (id, row.cost)).collect()
}

/// Each job's usage row over `window`, by job id.
fn job_rows(
    st: &AppState,
    runs: &[store::JobRun],
    window: Window,
    prices: &api::Prices,
) -> HashMap<i64, api::UsageRow> {
    let model_of = |node: &str| node_facts(st, node);
    // The hours' figures only where the price list charges by them (they cost a lookup an hour).
    let by_hour = prices.energy_pass_through || prices.heat_credit_share > 0.0;
    let hour_of = by_hour.then_some(|node: &str, at_ms: i64| hour_figures_of(st, node, at_ms));
    let r = report(runs, api::UsageBy::Job, window, &HashMap::new(), prices, model_of, hour_of);
    r.rows.into_iter().filter_map(|row| Some((row.key.parse::<i64>().ok()?, row))).collect()
}

/// The figures of the hour at `at_ms` of the site of `node`.
fn hour_figures_of(st: &AppState, node: &str, at_ms: i64) -> Option<HourFigures> {
    let site = st.fleet.node(*st.node_ids.get(node)?).site.index();
    st.site_years.hour_figures(site, crate::hour_of_year(at_ms))
}

/// What a report needs of a node: its GPU model, its GPUs' board power, its site.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NodeFacts {
    pub model: String,
    pub board_watts: f64,
    pub site: String,
}

fn node_facts(st: &AppState, node: &str) -> Option<NodeFacts> {
    let id = *st.node_ids.get(node)?;
    let site = st.fleet.sites.get(st.fleet.node(id).site.index())?.name.clone();
    let (model, board_watts) = match st.fleet.node_gpu_model(id) {
        Some(m) => (m.name.clone(), m.board_power_watts),
        None => ("none".to_string(), 0.0),
    };
    Some(NodeFacts { model, board_watts, site })
}

/// One row's running sums.
#[derive(Default)]
struct Sums {
    tenant: Option<String>,
    runs: u64,
    running: u64,
    /// The last run counted here, so a run split over pieces counts once.
    last_run: Option<(i64, i64)>,
    gpu_hours: f64,
    cpu_core_hours: f64,
    memory_gib_hours: f64,
    energy_joules: f64,
    estimated_joules: f64,
    measured_gpu_hours: f64,
    cost: f64,
    facility_kwh: f64,
    co2_g: f64,
    grid_eur: f64,
    heat_kwh: f64,
    heat_eur: f64,
}

impl Sums {
    fn add(&mut self, run: &store::JobRun, piece: &Piece, now_ms: i64, until_ms: i64, prices: &api::Prices) {
        if self.last_run != Some((run.job_id, run.generation)) {
            self.last_run = Some((run.job_id, run.generation));
            self.runs += 1;
            if run.ended_ms.is_none_or(|e| e > until_ms.min(now_ms)) {
                self.running += 1;
            }
        }
        let hours = piece.ms as f64 / HOUR_MS;
        let gpu_hours = piece.gpu_milli as f64 / 1000.0 * hours;
        self.gpu_hours += gpu_hours;
        self.cpu_core_hours += piece.cpu_milli as f64 / 1000.0 * hours;
        self.memory_gib_hours += piece.memory_mib as f64 / 1024.0 * hours;
        // The run's measured energy and coverage, spread evenly over its time so far.
        let run_ms = (run.ended_ms.unwrap_or(now_ms) - run.started_ms).max(1) as f64;
        let share_of_run = piece.ms as f64 / run_ms * piece.share_of_members;
        self.energy_joules += run.energy_joules as f64 * share_of_run;
        let measured = (run.energy_measured_ms as f64 / run_ms).min(1.0);
        self.measured_gpu_hours += gpu_hours * measured;
        // Where no draw was reported: its GPUs at board power, as the site's report counts them.
        let estimated_joules = piece.board_watts * piece.ms as f64 / 1000.0 * (1.0 - measured);
        self.estimated_joules += estimated_joules;
        let energy_kwh = (run.energy_joules as f64 * share_of_run + estimated_joules) / 3.6e6;
        self.facility_kwh += energy_kwh * piece.per_kwh.facility_kwh;
        self.co2_g += energy_kwh * piece.per_kwh.co2_g;
        let grid_eur = energy_kwh * piece.per_kwh.grid_eur;
        let heat_eur = energy_kwh * piece.per_kwh.heat_eur;
        self.grid_eur += grid_eur;
        self.heat_kwh += energy_kwh * piece.per_kwh.heat_kwh;
        self.heat_eur += heat_eur;
        let mut cost = piece.gpu_price_per_hour * hours
            + piece.cpu_milli as f64 / 1000.0 * hours * prices.cpu_core_hour
            + piece.memory_mib as f64 / 1024.0 * hours * prices.memory_gib_hour
            + energy_kwh * prices.energy_kwh;
        if prices.energy_pass_through {
            cost += grid_eur;
        }
        // The credit never takes a piece's cost below zero.
        cost = (cost - heat_eur * prices.heat_credit_share).max(0.0);
        self.cost += if run.deferrable { cost * (1.0 - prices.deferrable_discount) } else { cost };
    }

    fn row(&self, key: String) -> api::UsageRow {
        api::UsageRow {
            key,
            tenant: self.tenant.clone(),
            runs: self.runs,
            running: self.running,
            gpu_hours: self.gpu_hours,
            cpu_core_hours: self.cpu_core_hours,
            memory_gib_hours: self.memory_gib_hours,
            energy_kwh_measured: self.energy_joules / 3.6e6,
            energy_kwh_estimated: self.estimated_joules / 3.6e6,
            measured_share: if self.gpu_hours > 0.0 { self.measured_gpu_hours / self.gpu_hours } else { 0.0 },
            cost: self.cost,
            facility_kwh: self.facility_kwh,
            co2_kg: self.co2_g / 1000.0,
            grid_cost_eur: self.grid_eur,
            heat_sold_kwh: self.heat_kwh,
            heat_revenue_eur: self.heat_eur,
        }
    }
}

/// A report's window, `[since_ms, until_ms)`, read at `now_ms` (Unix ms).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub since_ms: i64,
    pub until_ms: i64,
    pub now_ms: i64,
}

/// A site's figures at one hour, for the energy of the runs there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct HourFigures {
    /// The grid's carbon intensity, gCO2/kWh.
    pub co2_g_per_kwh: f64,
    /// Site watts per IT watt at the hour's outdoor temperature: the site's draw is linear in
    /// its IT draw, so this is what one more IT watt costs the site (cooling, conversion).
    pub marginal_pue: f64,
    /// The grid's price, EUR/MWh.
    pub price_eur_per_mwh: f64,
    /// Heat sold to the site's network per unit of IT energy (the heat pump's work included).
    pub heat_sold_per_it: f64,
    /// The heat pump's electricity per unit of IT energy: paid at the grid's price with the rest.
    pub heat_pump_per_it: f64,
    /// What the network pays for heat, EUR/MWh.
    pub heat_price_eur_per_mwh: f64,
}

/// What one kWh of a piece's IT energy brings with it, averaged over the piece's hours.
#[derive(Clone, Copy, Debug, Default)]
struct PerKwh {
    facility_kwh: f64,
    co2_g: f64,
    /// Its energy and the facility's at the hour's grid price, EUR.
    grid_eur: f64,
    heat_kwh: f64,
    heat_eur: f64,
}

/// A part of a run: some of its members over some of its time.
#[derive(Clone, Copy, Default)]
struct Piece {
    ms: i64,
    per_kwh: PerKwh,
    gpu_milli: i64,
    cpu_milli: i64,
    memory_mib: i64,
    /// The members' share of the whole run's GPUs (1 for all of them).
    share_of_members: f64,
    /// What the members' GPUs draw at board power, watts.
    board_watts: f64,
    /// What the members' GPUs cost an hour, by their models' prices.
    gpu_price_per_hour: f64,
}

/// The report of `runs` over `[since_ms, until_ms)`; a run still going counts up to `now_ms`.
/// `model_of` gives a node's GPU model, board power and site.
pub(crate) fn report(
    runs: &[store::JobRun],
    by: api::UsageBy,
    Window { since_ms, until_ms, now_ms }: Window,
    tenant_names: &HashMap<i64, String>,
    prices: &api::Prices,
    model_of: impl Fn(&str) -> Option<NodeFacts>,
    hour_of: Option<impl Fn(&str, i64) -> Option<HourFigures>>,
) -> api::UsageReport {
    // Each (node, hour)'s figures once, however many rows a run's hours fall in.
    let mut hours: HashMap<(String, i64), Option<HourFigures>> = HashMap::new();
    let mut per_kwh = |node: Option<&str>, start_ms: i64, ms: i64| -> PerKwh {
        let (Some(node), Some(hour_of)) = (node, hour_of.as_ref()) else { return PerKwh::default() };
        let (mut sum, mut at) = (PerKwh::default(), start_ms);
        let end = start_ms + ms;
        while at < end {
            let hour = at.div_euclid(3_600_000);
            let next = ((hour + 1) * 3_600_000).min(end);
            let weight = (next - at) as f64 / ms.max(1) as f64;
            let figures = *hours.entry((node.to_string(), hour)).or_insert_with(|| hour_of(node, hour * 3_600_000));
            if let Some(f) = figures {
                sum.facility_kwh += weight * (f.marginal_pue - 1.0).max(0.0);
                sum.co2_g += weight * f.marginal_pue.max(1.0) * f.co2_g_per_kwh;
                // The site's grid energy: IT, facility and the heat pump that sells the heat.
                sum.grid_eur += weight * (f.marginal_pue.max(1.0) + f.heat_pump_per_it) * f.price_eur_per_mwh / 1000.0;
                sum.heat_kwh += weight * f.heat_sold_per_it;
                sum.heat_eur += weight * f.heat_sold_per_it * f.heat_price_eur_per_mwh / 1000.0;
            }
            at = next;
        }
        sum
    };
    let mut rows: Vec<(String, Sums)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut total = Sums::default();
    let tenant_of =
        |run: &store::JobRun| tenant_names.get(&run.tenant_id).cloned().unwrap_or_else(|| run.tenant_id.to_string());
    for run in runs {
        let start = run.started_ms.max(since_ms);
        let end = run.ended_ms.unwrap_or(now_ms).min(until_ms);
        if end <= start {
            continue;
        }
        let mut parts = by_model(run, &model_of);
        for (model, part) in &mut parts {
            let per_gpu = prices.gpu_hour_of(model);
            part.gpu_price_per_hour = part.gpu_milli as f64 / 1000.0 * per_gpu;
        }
        let node = first_node(run);
        let whole = Piece {
            ms: end - start,
            per_kwh: per_kwh(node.as_deref(), start, end - start),
            board_watts: parts.iter().map(|p| p.1.board_watts).sum(),
            gpu_price_per_hour: parts.iter().map(|p| p.1.gpu_price_per_hour).sum(),
            ..whole_of(run)
        };
        total.add(run, &whole, now_ms, until_ms, prices);
        let mut pieces: Vec<(String, Piece)> = Vec::new();
        match by {
            api::UsageBy::Tenant => pieces.push((tenant_of(run), whole)),
            api::UsageBy::Job => pieces.push((run.job_id.to_string(), whole)),
            api::UsageBy::Site => {
                let site = node.as_deref().and_then(&model_of).map_or_else(|| "unknown".to_string(), |f| f.site);
                pieces.push((site, whole));
            }
            api::UsageBy::Day | api::UsageBy::Month | api::UsageBy::SiteMonth => {
                let site = (by == api::UsageBy::SiteMonth)
                    .then(|| node.as_deref().and_then(&model_of).map_or_else(|| "unknown".to_string(), |f| f.site));
                let mut at = start;
                while at < end {
                    let (y, m, d) = api::utc_date(at);
                    let (key, next) = if by == api::UsageBy::Day {
                        (format!("{y:04}-{m:02}-{d:02}"), (at.div_euclid(DAY_MS) + 1) * DAY_MS)
                    } else {
                        let next =
                            if m == 12 { api::utc_month_start_ms(y + 1, 1) } else { api::utc_month_start_ms(y, m + 1) };
                        match &site {
                            Some(site) => (format!("{site} {y:04}-{m:02}"), next),
                            None => (format!("{y:04}-{m:02}"), next),
                        }
                    };
                    let piece_end = next.min(end);
                    let per_kwh = per_kwh(node.as_deref(), at, piece_end - at);
                    pieces.push((key, Piece { ms: piece_end - at, per_kwh, ..whole }));
                    at = piece_end;
                }
            }
            api::UsageBy::Model => {
                for (model, part) in parts {
                    pieces.push((model, Piece { ms: end - start, per_kwh: whole.per_kwh, ..part }));
                }
            }
        }
        for (key, piece) in pieces {
            let at = *index.entry(key.clone()).or_insert_with(|| {
                rows.push((key.clone(), Sums::default()));
                rows.len() - 1
            });
            let sums = &mut rows[at].1;
            if by == api::UsageBy::Job {
                sums.tenant = Some(tenant_of(run));
            }
            sums.add(run, &piece, now_ms, until_ms, prices);
        }
    }
    rows.sort_by(|a, b| match by {
        // Numbers in order, not as text.
        api::UsageBy::Job => a.0.parse::<i64>().unwrap_or(0).cmp(&b.0.parse::<i64>().unwrap_or(0)),
        _ => a.0.cmp(&b.0),
    });
    api::UsageReport {
        since_ms,
        until_ms,
        by,
        currency: prices.currency.clone(),
        rows: rows.iter().map(|(k, s)| s.row(k.clone())).collect(),
        total: total.row("total".into()),
    }
}

/// The node of a run's first member (a gang's members are at one site).
fn first_node(run: &store::JobRun) -> Option<String> {
    let members = crate::convert::decode_members(run.placement_json.as_deref()?).ok()?;
    members.into_iter().next().map(|m| m.node)
}

fn whole_of(run: &store::JobRun) -> Piece {
    Piece {
        gpu_milli: run.gpu_milli_held(),
        cpu_milli: run.cpu_milli * run.nodes,
        memory_mib: run.memory_mib * run.nodes,
        share_of_members: 1.0,
        ..Piece::default()
    }
}

/// A run's members grouped by their node's GPU model (`none` for CPU-only work, `unknown` for a
/// node no longer in the fleet); a run whose placement cannot be read counts whole as `unknown`.
fn by_model(run: &store::JobRun, model_of: &impl Fn(&str) -> Option<NodeFacts>) -> Vec<(String, Piece)> {
    let whole = whole_of(run);
    if whole.gpu_milli == 0 {
        return vec![("none".into(), whole)];
    }
    let members =
        run.placement_json.as_deref().and_then(|p| crate::convert::decode_members(p).ok()).unwrap_or_default();
    let held: i64 = members.iter().flat_map(|m| &m.gpus).map(|g| i64::from(g.milli)).sum();
    if members.is_empty() || held == 0 {
        return vec![("unknown".into(), whole)];
    }
    let mut parts: Vec<(String, Piece)> = Vec::new();
    for m in &members {
        let milli: i64 = m.gpus.iter().map(|g| i64::from(g.milli)).sum();
        let (model, board_watts) =
            model_of(&m.node).map_or_else(|| ("unknown".into(), 0.0), |f| (f.model, f.board_watts));
        let at = match parts.iter().position(|(k, _)| *k == model) {
            Some(at) => at,
            None => {
                parts.push((model, Piece::default()));
                parts.len() - 1
            }
        };
        let part = &mut parts[at].1;
        part.gpu_milli += milli;
        part.cpu_milli += i64::try_from(m.cpu_milli).unwrap_or(i64::MAX);
        part.memory_mib += i64::try_from(m.memory_mib).unwrap_or(i64::MAX);
        part.share_of_members += milli as f64 / held as f64;
        part.board_watts += milli as f64 / 1000.0 * board_watts;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    /// 2026-12-07 00:00 UTC.
    const DEC7: i64 = 1_796_601_600_000;

    fn run(job_id: i64, tenant_id: i64, started_ms: i64, ended_ms: Option<i64>) -> store::JobRun {
        store::JobRun {
            job_id,
            generation: 1,
            tenant_id,
            job_name: "train".into(),
            nodes: 2,
            gpus_per_node: 8,
            gpu_milli: None,
            cpu_milli: 16_000,
            memory_mib: 65_536,
            placement_json: Some(
                r#"[{"node":"a","cpu_milli":16000,"memory_mib":65536,"gpus":[{"index":0,"milli":1000},{"index":1,"milli":1000},{"index":2,"milli":1000},{"index":3,"milli":1000},{"index":4,"milli":1000},{"index":5,"milli":1000},{"index":6,"milli":1000},{"index":7,"milli":1000}]},
                   {"node":"b","cpu_milli":16000,"memory_mib":65536,"gpus":[{"index":0,"milli":1000},{"index":1,"milli":1000},{"index":2,"milli":1000},{"index":3,"milli":1000},{"index":4,"milli":1000},{"index":5,"milli":1000},{"index":6,"milli":1000},{"index":7,"milli":1000}]}]"#
                    .into(),
            ),
            started_ms,
            ended_ms,
            end_state: ended_ms.map(|_| "succeeded".into()),
            energy_joules: 0,
            energy_measured_ms: 0,
            deferrable: false,
        }
    }

    const NO_HOURS: Option<fn(&str, i64) -> Option<HourFigures>> = None;

    fn names() -> HashMap<i64, String> {
        [(1, "lab".to_string()), (2, "other".to_string())].into()
    }

    fn model(node: &str) -> Option<NodeFacts> {
        let (model, site) = if node == "a" { ("H100", "valence") } else { ("H200", "lyon") };
        Some(NodeFacts { model: model.into(), board_watts: 700.0, site: site.into() })
    }

    #[test]
    fn a_run_over_midnight_splits_between_its_days() {
        let runs = [run(1, 1, DEC7 - 2 * H, Some(DEC7 + H))];
        let r = report(
            &runs,
            api::UsageBy::Day,
            Window { since_ms: 0, until_ms: DEC7 + 10 * H, now_ms: DEC7 + 10 * H },
            &names(),
            &api::Prices::default(),
            model,
            NO_HOURS,
        );
        let keys: Vec<&str> = r.rows.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, ["2026-12-06", "2026-12-07"]);
        assert!((r.rows[0].gpu_hours - 32.0).abs() < 1e-9, "16 GPUs, 2 h: {:?}", r.rows[0]);
        assert!((r.rows[1].gpu_hours - 16.0).abs() < 1e-9);
        assert!((r.total.gpu_hours - 48.0).abs() < 1e-9);
        assert!((r.total.cpu_core_hours - 96.0).abs() < 1e-9, "32 cores, 3 h");
        assert!((r.total.memory_gib_hours - 384.0).abs() < 1e-9, "128 GiB, 3 h");
        assert_eq!((r.rows[0].runs, r.rows[1].runs, r.total.runs), (1, 1, 1), "counted once in each");
        let months = report(
            &runs,
            api::UsageBy::Month,
            Window { since_ms: 0, until_ms: DEC7 + 10 * H, now_ms: DEC7 + 10 * H },
            &names(),
            &api::Prices::default(),
            model,
            NO_HOURS,
        );
        assert_eq!(months.rows.len(), 1);
        assert_eq!(months.rows[0].key, "2026-12");
    }

    #[test]
    fn the_window_cuts_runs_and_an_open_run_counts_up_to_now() {
        let runs = [run(1, 1, DEC7, Some(DEC7 + 2 * H)), run(2, 2, DEC7 + H, None)];
        let now = DEC7 + 3 * H;
        let r = report(
            &runs,
            api::UsageBy::Tenant,
            Window { since_ms: DEC7 + H, until_ms: DEC7 + 10 * H, now_ms: now },
            &names(),
            &api::Prices::default(),
            model,
            NO_HOURS,
        );
        assert_eq!(r.rows.iter().map(|x| x.key.as_str()).collect::<Vec<_>>(), ["lab", "other"]);
        assert!((r.rows[0].gpu_hours - 16.0).abs() < 1e-9, "1 h of 2 inside the window");
        assert!((r.rows[1].gpu_hours - 32.0).abs() < 1e-9, "2 h so far");
        assert_eq!((r.rows[0].running, r.rows[1].running), (0, 1));
    }

    #[test]
    fn gpu_models_split_a_gang_by_its_members_nodes_and_shares_count_by_their_share() {
        let mut share = run(2, 2, DEC7, Some(DEC7 + 4 * H));
        share.nodes = 1;
        share.gpus_per_node = 1;
        share.gpu_milli = Some(250);
        share.placement_json =
            Some(r#"[{"node":"b","cpu_milli":1000,"memory_mib":1024,"gpus":[{"index":3,"milli":250}]}]"#.into());
        let mut gang = run(1, 1, DEC7, Some(DEC7 + H));
        gang.energy_joules = 3_600_000 * 10; // 10 kWh
        gang.energy_measured_ms = H / 2;
        let runs = [gang, share];
        let r = report(
            &runs,
            api::UsageBy::Model,
            Window { since_ms: 0, until_ms: DEC7 + 10 * H, now_ms: DEC7 + 10 * H },
            &names(),
            &api::Prices::default(),
            model,
            NO_HOURS,
        );
        let got: Vec<(&str, f64)> = r.rows.iter().map(|x| (x.key.as_str(), x.gpu_hours)).collect();
        assert_eq!(got, [("H100", 8.0), ("H200", 9.0)], "8 GPU-h each for the gang, 0.25 x 4 h for the share");
        assert!((r.rows[0].energy_kwh_measured - 5.0).abs() < 1e-9, "half the gang's energy on each node");
        assert!((r.total.energy_kwh_measured - 10.0).abs() < 1e-9);
        assert!((r.rows[0].measured_share - 0.5).abs() < 1e-9, "a draw reported over half its run");
        // The other half at board power: 8 GPUs x 700 W x 0.5 h on each node.
        assert!((r.rows[0].energy_kwh_estimated - 2.8).abs() < 1e-9, "{:?}", r.rows[0]);
        assert!((r.rows[1].energy_kwh_estimated - (2.8 + 0.25 * 0.7 * 4.0)).abs() < 1e-9, "{:?}", r.rows[1]);
        let by_job = report(
            &runs,
            api::UsageBy::Job,
            Window { since_ms: 0, until_ms: DEC7 + 10 * H, now_ms: DEC7 + 10 * H },
            &names(),
            &api::Prices::default(),
            model,
            NO_HOURS,
        );
        assert_eq!(by_job.rows[1].tenant.as_deref(), Some("other"));
        assert!((by_job.rows[1].gpu_hours - 1.0).abs() < 1e-9);
        // By site: a gang counts whole at its first member's site.
        let window = Window { since_ms: 0, until_ms: DEC7 + 10 * H, now_ms: DEC7 + 10 * H };
        let by_site = report(&runs, api::UsageBy::Site, window, &names(), &api::Prices::default(), model, NO_HOURS);
        let got: Vec<(&str, f64)> = by_site.rows.iter().map(|x| (x.key.as_str(), x.gpu_hours)).collect();
        assert_eq!(got, [("lyon", 1.0), ("valence", 16.0)]);
    }

    #[test]
    fn cost_follows_the_price_list_and_a_deferrable_job_pays_less() {
        let mut prices = api::Prices { gpu_hour_default: 2.0, cpu_core_hour: 0.01, ..Default::default() };
        prices.gpu_hour.insert("H100".into(), 3.0);
        prices.deferrable_discount = 0.5;
        let gang = run(1, 1, DEC7, Some(DEC7 + H));
        let mut later = run(2, 1, DEC7, Some(DEC7 + H));
        later.deferrable = true;
        let r = report(
            &[gang, later],
            api::UsageBy::Job,
            Window { since_ms: 0, until_ms: DEC7 + 10 * H, now_ms: DEC7 + 10 * H },
            &names(),
            &prices,
            model,
            NO_HOURS,
        );
        // 8 H100-hours at 3, 8 H200-hours at the default 2, 32 core-hours at 0.01.
        assert!((r.rows[0].cost - (24.0 + 16.0 + 0.32)).abs() < 1e-9, "{:?}", r.rows[0]);
        assert!((r.rows[1].cost - (24.0 + 16.0 + 0.32) / 2.0).abs() < 1e-9, "{:?}", r.rows[1]);
        assert_eq!(r.currency, "EUR");
    }

    #[test]
    fn a_price_list_with_a_bad_figure_is_refused_by_its_field() {
        let field = |p: api::Prices| match check_prices(&p) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(api::Prices { currency: "euro".into(), ..Default::default() }), "currency");
        assert_eq!(field(api::Prices { cpu_core_hour: -1.0, ..Default::default() }), "cpu_core_hour");
        assert_eq!(field(api::Prices { deferrable_discount: 1.5, ..Default::default() }), "deferrable_discount");
        let mut p = api::Prices::default();
        p.gpu_hour.insert("H200".into(), f64::NAN);
        assert_eq!(field(p), "gpu_hour.H200");
        assert!(check_prices(&api::Prices::default()).is_ok());
    }

    #[test]
    fn facility_energy_and_carbon_follow_each_hours_figures() {
        // Even hours: 100 g/kWh and a PUE of 1.1; odd hours: 300 g/kWh and 1.2.
        let hour_of = |_node: &str, at_ms: i64| {
            let even = (at_ms / H) % 2 == 0;
            Some(HourFigures {
                co2_g_per_kwh: if even { 100.0 } else { 300.0 },
                marginal_pue: if even { 1.1 } else { 1.2 },
                price_eur_per_mwh: if even { 50.0 } else { 150.0 },
                heat_sold_per_it: if even { 0.5 } else { 0.0 },
                heat_pump_per_it: if even { 0.1 } else { 0.0 },
                heat_price_eur_per_mwh: 40.0,
            })
        };
        assert_eq!((DEC7 / H) % 2, 0);
        let runs = [run(1, 1, DEC7, Some(DEC7 + 2 * H))];
        let window = Window { since_ms: 0, until_ms: DEC7 + 10 * H, now_ms: DEC7 + 10 * H };
        let r = report(&runs, api::UsageBy::Day, window, &names(), &api::Prices::default(), model, Some(hour_of));
        // No draw reported: 16 GPUs at 700 W, 11.2 kWh an hour.
        let row = &r.rows[0];
        assert!((row.energy_kwh_estimated - 22.4).abs() < 1e-9, "{row:?}");
        assert!((row.facility_kwh - (11.2 * 0.1 + 11.2 * 0.2)).abs() < 1e-9, "{row:?}");
        assert!((row.co2_kg - (11.2 * 1.1 * 100.0 + 11.2 * 1.2 * 300.0) / 1000.0).abs() < 1e-9, "{row:?}");
        assert!((r.total.co2_kg - row.co2_kg).abs() < 1e-12);
        // The grid's cost hour by hour, and heat sold in the even hour only.
        assert!((row.grid_cost_eur - (11.2 * 1.2 * 0.05 + 11.2 * 1.2 * 0.15)).abs() < 1e-9, "{row:?}");
        assert!((row.heat_sold_kwh - 5.6).abs() < 1e-9, "{row:?}");
        assert!((row.heat_revenue_eur - 5.6 * 0.04).abs() < 1e-9, "{row:?}");
        assert_eq!(row.cost, 0.0, "nothing is charged by an empty price list");

        // Passed through, the grid's cost is charged; credited, the heat's revenue comes off.
        let prices = api::Prices {
            gpu_hour_default: 1.0,
            energy_pass_through: true,
            heat_credit_share: 0.5,
            ..Default::default()
        };
        let r = report(&runs, api::UsageBy::Day, window, &names(), &prices, model, Some(hour_of));
        let row = &r.rows[0];
        let want = 16.0 * 2.0 + row.grid_cost_eur - 0.5 * row.heat_revenue_eur;
        assert!((row.cost - want).abs() < 1e-9, "{row:?}, want {want}");
    }

    #[test]
    fn pass_through_and_heat_credit_need_the_grids_currency() {
        let field = |p: api::Prices| match check_prices(&p) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let usd = || api::Prices { currency: "USD".into(), ..Default::default() };
        assert_eq!(field(api::Prices { energy_pass_through: true, ..usd() }), "energy_pass_through");
        assert_eq!(field(api::Prices { heat_credit_share: 0.2, ..usd() }), "heat_credit_share");
        assert_eq!(field(api::Prices { heat_credit_share: 2.0, ..Default::default() }), "heat_credit_share");
        assert!(check_prices(&api::Prices { energy_pass_through: true, ..Default::default() }).is_ok());
    }
}
