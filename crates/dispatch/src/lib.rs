//! Which site a job goes to. The federation asks it of every submission with what its sites
//! last reported; the multi-site twin asks it of every arrival with its site engines' state.
//! Both call [`choose`] with the same facts, so a policy compared in the twin is the policy run.
//!
//! A job goes to one site (gangs never span sites). The choice, in order:
//! 1. the job's constraints: a site or region it is bound to, and sites that hold its GPU model
//!    and could ever fit it;
//! 2. of those, the sites that answer;
//! 3. of those, the sites where it fits now (free GPUs beyond what already waits there, and power
//!    headroom under the site's grid cap), ranked by the policy: most free capacity, cheapest and
//!    cleanest power for the hours ahead, most heat wanted by the site's heat network, or least
//!    data to move;
//! 4. where it fits nowhere now, the site with the least backlog per GPU.
//!
//! Every choice comes with its [`Reason`], which the federation records and shows.
//!
//! Knows nothing about HTTP, SQL, the clock or the fleet's layout: facts come in as numbers.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How the federation ranks the sites where a job fits now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DispatchPolicy {
    /// The site with the largest share of its GPUs free.
    Capacity,
    /// The site whose power costs least for the hours ahead, carbon priced in.
    PriceCarbon,
    /// The site whose heat network wants the most heat it is not getting.
    Heat,
    /// The site that holds the job's data, or the one it moves to fastest.
    Data,
}

impl DispatchPolicy {
    pub const ALL: [DispatchPolicy; 4] =
        [DispatchPolicy::Capacity, DispatchPolicy::PriceCarbon, DispatchPolicy::Heat, DispatchPolicy::Data];

    pub fn as_str(self) -> &'static str {
        match self {
            DispatchPolicy::Capacity => "capacity",
            DispatchPolicy::PriceCarbon => "price-carbon",
            DispatchPolicy::Heat => "heat",
            DispatchPolicy::Data => "data",
        }
    }
}

impl fmt::Display for DispatchPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DispatchPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "capacity" => Ok(DispatchPolicy::Capacity),
            "price-carbon" | "price" | "carbon" => Ok(DispatchPolicy::PriceCarbon),
            "heat" => Ok(DispatchPolicy::Heat),
            "data" => Ok(DispatchPolicy::Data),
            other => Err(format!("unknown dispatch policy '{other}' (expected capacity, price-carbon, heat or data)")),
        }
    }
}

/// A dataset a job reads: where it lives and how big it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    pub site: String,
    pub bytes: u64,
}

/// What a job asks of its site.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobNeeds {
    /// GPUs the job holds, fractions counted as their share.
    pub gpus: f64,
    /// The job must run at this site.
    pub site: Option<String>,
    /// The job must run in this region (a tenant bound to French soil, to one region).
    pub region: Option<String>,
    pub dataset: Option<Dataset>,
}

/// What the federation knows of one site for one job: the site's last report, and the two
/// answers only the site's own scheduler can give (does it hold the job's kind of GPU, does the job
/// fit now), which the caller works out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteFacts {
    pub name: String,
    pub region: Option<String>,
    /// The site answered lately.
    pub reachable: bool,
    /// The site has nodes of the job's GPU model, enough of them to ever hold it.
    pub could_ever_fit: bool,
    /// The job fits now: free GPUs for it beyond what already waits, and power headroom.
    pub fits_now: bool,
    pub total_gpus: f64,
    pub free_gpus: f64,
    /// GPUs asked by the jobs waiting at the site.
    pub queued_gpus: f64,
    /// Mean grid price over the hours ahead, with the site's own adder, EUR/MWh.
    pub price_eur_per_mwh: f64,
    /// Mean grid carbon intensity over the hours ahead, gCO2/kWh.
    pub co2_g_per_kwh: f64,
    /// What the site's heat network asks for now, watts.
    pub heat_demand_watts: f64,
    /// What the site gives it now, watts.
    pub heat_supplied_watts: f64,
    /// The site's link to the other sites, Gbit/s; `None`: data cannot be moved to or from it.
    pub fiber_gbps: Option<f64>,
}

impl SiteFacts {
    /// Heat the site's network wants and does not get, watts.
    pub fn heat_wanted_watts(&self) -> f64 {
        (self.heat_demand_watts - self.heat_supplied_watts).max(0.0)
    }

    /// GPUs asked beyond what is free, per GPU of the site: how long a new job waits, roughly.
    pub fn backlog_per_gpu(&self, job_gpus: f64) -> f64 {
        (self.queued_gpus + job_gpus - self.free_gpus).max(0.0) / self.total_gpus.max(1e-9)
    }
}

/// Knobs of the ranking.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DispatchWeights {
    /// Price of carbon added to the power's price, EUR per tonne of CO2 (the EU ETS price is of
    /// the order of 70-90 EUR/t).
    pub carbon_eur_per_tonne: f64,
    /// Sites within this many EUR/MWh, or watts of heat wanted, or seconds of transfer, of the best
    /// rank equal; ties go to the most free capacity.
    pub price_tolerance_eur_per_mwh: f64,
    pub heat_tolerance_watts: f64,
    pub transfer_tolerance_s: f64,
}

impl Default for DispatchWeights {
    fn default() -> Self {
        DispatchWeights {
            carbon_eur_per_tonne: 80.0,
            price_tolerance_eur_per_mwh: 0.5,
            heat_tolerance_watts: 1.0,
            transfer_tolerance_s: 1.0,
        }
    }
}

/// Why a site was chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reason {
    /// Fits now; the largest share of free GPUs of the `candidates` sites where it fits.
    MostFree { free_share: f64, candidates: u32 },
    /// Fits now; the cheapest power of the candidates, carbon priced in.
    Cheapest { eur_per_mwh: f64, co2_g_per_kwh: f64, candidates: u32 },
    /// Fits now; its heat network wants the most heat of the candidates.
    HeatWanted { watts: f64, candidates: u32 },
    /// Fits now; the least data to move of the candidates (0 s: the data is there).
    NearData { transfer_s: f64, candidates: u32 },
    /// Fits at no site now; the least backlog per GPU of the `candidates` sites that answer.
    LeastBacklog { backlog_per_gpu: f64, candidates: u32 },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let of = |n: u32| if n == 1 { "the only site".to_string() } else { format!("of {n} sites") };
        match *self {
            Reason::MostFree { free_share, candidates } => {
                write!(f, "fits now, most GPUs free ({:.0}%) {}", free_share * 100.0, of(candidates))
            }
            Reason::Cheapest { eur_per_mwh, co2_g_per_kwh, candidates } => write!(
                f,
                "fits now, cheapest power ahead ({eur_per_mwh:.1} EUR/MWh, {co2_g_per_kwh:.0} gCO2/kWh) {}",
                of(candidates)
            ),
            Reason::HeatWanted { watts, candidates } => {
                write!(f, "fits now, its heat network wants {:.2} MW more {}", watts / 1e6, of(candidates))
            }
            Reason::NearData { transfer_s, candidates } if transfer_s <= 0.0 => {
                write!(f, "fits now, holds the job's data {}", of(candidates))
            }
            Reason::NearData { transfer_s, candidates } => {
                write!(f, "fits now, data moved in {transfer_s:.0} s {}", of(candidates))
            }
            Reason::LeastBacklog { backlog_per_gpu, candidates } => {
                write!(f, "fits nowhere now, least backlog ({backlog_per_gpu:.2} GPU asked per GPU) {}", of(candidates))
            }
        }
    }
}

/// A site chosen for a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Index of the site in the facts handed in.
    pub site: usize,
    pub reason: Reason,
    /// Time to move the job's dataset to the site, seconds (0 when it is there or there is none).
    pub transfer_s: f64,
}

/// Why no site can take a job.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// No site meets the job's constraints: a permanent answer, the job is refused.
    #[error("no site can ever run this job: {0}")]
    NoSite(String),
    /// Sites would, but none answers now: the job waits at the federation.
    #[error("no site that can run this job answers now ({0})")]
    NoneReachable(String),
}

/// Seconds to move `dataset` to `to` (0 if it is there), `None` if it cannot be moved there.
pub fn transfer_s(dataset: Option<&Dataset>, to: &SiteFacts, sites: &[SiteFacts]) -> Option<f64> {
    let Some(d) = dataset else { return Some(0.0) };
    if d.site == to.name {
        return Some(0.0);
    }
    // An unknown source site is taken to be outside the federation, reached over the
    // destination's link alone.
    let from = sites.iter().find(|s| s.name == d.site).map_or(Some(f64::INFINITY), |s| s.fiber_gbps);
    let gbps = from?.min(to.fiber_gbps?);
    Some(d.bytes as f64 * 8.0 / (gbps * 1e9))
}

/// Whether `site` meets the job's constraints (site, region, GPU model and size).
pub fn allowed(job: &JobNeeds, site: &SiteFacts) -> bool {
    job.site.as_ref().is_none_or(|s| *s == site.name)
        && job.region.as_ref().is_none_or(|r| site.region.as_ref().is_some_and(|sr| sr.eq_ignore_ascii_case(r)))
        && site.could_ever_fit
}

/// Chooses the site for `job`. Deterministic: the same facts give the same choice; ties go to
/// the most free share, then to the earlier site.
pub fn choose(
    policy: DispatchPolicy,
    weights: &DispatchWeights,
    job: &JobNeeds,
    sites: &[SiteFacts],
) -> Result<Choice, Refusal> {
    let allowed_sites: Vec<usize> = (0..sites.len()).filter(|&i| allowed(job, &sites[i])).collect();
    if allowed_sites.is_empty() {
        return Err(Refusal::NoSite(constraint_text(job)));
    }
    let live: Vec<usize> = allowed_sites.iter().copied().filter(|&i| sites[i].reachable).collect();
    if live.is_empty() {
        let names: Vec<&str> = allowed_sites.iter().map(|&i| sites[i].name.as_str()).collect();
        return Err(Refusal::NoneReachable(names.join(", ")));
    }
    let transfer: Vec<f64> =
        sites.iter().map(|s| transfer_s(job.dataset.as_ref(), s, sites).unwrap_or(f64::INFINITY)).collect();
    let free_share = |i: usize| sites[i].free_gpus / sites[i].total_gpus.max(1e-9);
    let fitting: Vec<usize> = live.iter().copied().filter(|&i| sites[i].fits_now).collect();
    if fitting.is_empty() {
        let backlog = |i: usize| sites[i].backlog_per_gpu(job.gpus);
        let best = pick(&live, backlog, 0.0, free_share);
        return Ok(Choice {
            site: best,
            reason: Reason::LeastBacklog { backlog_per_gpu: backlog(best), candidates: live.len() as u32 },
            transfer_s: finite_or_zero(transfer[best]),
        });
    }
    let candidates = fitting.len() as u32;
    let cost = |i: usize| sites[i].price_eur_per_mwh + weights.carbon_eur_per_tonne * sites[i].co2_g_per_kwh / 1000.0;
    let (best, reason) = match policy {
        DispatchPolicy::Capacity => {
            let best = pick(&fitting, |i| -free_share(i), 0.0, free_share);
            (best, Reason::MostFree { free_share: free_share(best), candidates })
        }
        DispatchPolicy::PriceCarbon => {
            let best = pick(&fitting, cost, weights.price_tolerance_eur_per_mwh, free_share);
            let s = &sites[best];
            (best, Reason::Cheapest { eur_per_mwh: s.price_eur_per_mwh, co2_g_per_kwh: s.co2_g_per_kwh, candidates })
        }
        DispatchPolicy::Heat => {
            let wanted = |i: usize| sites[i].heat_wanted_watts();
            if fitting.iter().all(|&i| wanted(i) <= weights.heat_tolerance_watts) {
                let best = pick(&fitting, |i| -free_share(i), 0.0, free_share);
                (best, Reason::MostFree { free_share: free_share(best), candidates })
            } else {
                let best = pick(&fitting, |i| -wanted(i), weights.heat_tolerance_watts, free_share);
                (best, Reason::HeatWanted { watts: wanted(best), candidates })
            }
        }
        DispatchPolicy::Data => {
            let best = pick(&fitting, |i| transfer[i], weights.transfer_tolerance_s, free_share);
            (best, Reason::NearData { transfer_s: finite_or_zero(transfer[best]), candidates })
        }
    };
    Ok(Choice { site: best, reason, transfer_s: finite_or_zero(transfer[best]) })
}

fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

/// The candidate of lowest `rank`; candidates within `tolerance` of it tie, and a tie goes to
/// the most `free_share`, then to the earlier site.
fn pick(candidates: &[usize], rank: impl Fn(usize) -> f64, tolerance: f64, free_share: impl Fn(usize) -> f64) -> usize {
    let best_rank = candidates.iter().map(|&i| rank(i)).fold(f64::INFINITY, f64::min);
    let mut best = candidates[0];
    let mut best_free = f64::NEG_INFINITY;
    for &i in candidates {
        let r = rank(i);
        let tied = r <= best_rank + tolerance || (r.is_infinite() && best_rank.is_infinite());
        if tied && free_share(i) > best_free {
            best = i;
            best_free = free_share(i);
        }
    }
    best
}

fn constraint_text(job: &JobNeeds) -> String {
    let mut parts = vec![format!("{} GPUs of the model it asks for", job.gpus)];
    if let Some(s) = &job.site {
        parts.push(format!("being site {s}"));
    }
    if let Some(r) = &job.region {
        parts.push(format!("being in region {r}"));
    }
    format!("none has {}", parts.join(" while "))
}
