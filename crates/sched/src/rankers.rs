//! The rankers of the preemptive policies: Tiresias' discretized two-dimensional LAS, clairvoyant
//! SRPT (a reference), and drome's learned Gittins index.

use crate::prio::{Key, PreemptConfig, PriorityPolicy, Ranker, RunningJob, f64_key, key_f64};
use crate::queue::QueuedJob;
use model::{SimDuration, SimTime, WorkloadId};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, VecDeque};

fn submit_ms(w: &model::Workload) -> u64 {
    w.submit_time.as_millis()
}

/// Tiresias (NSDI'19), discretized 2D-LAS: a job's priority queue is set by the GPU-seconds it has
/// attained (GPUs x time), FIFO by submit time within a queue, higher queues preempt lower ones.
/// A job that has waited longer than `promote_knob` times the time it has run is promoted to the
/// top queue (its attained service counts from zero again), so nothing starves. It never reads
/// durations.
pub struct Tiresias {
    /// Queue boundaries in attained GPU-seconds, ascending: `[3600]` is two queues.
    pub thresholds: Vec<f64>,
    pub promote_knob: f64,
    base: FxHashMap<WorkloadId, f64>,
}

impl Default for Tiresias {
    /// Two queues split at one GPU-hour; promotion after waiting 8 x the time run.
    fn default() -> Self {
        Tiresias { thresholds: vec![3600.0], promote_knob: 8.0, base: FxHashMap::default() }
    }
}

impl Tiresias {
    fn level(&self, attained: f64) -> u64 {
        self.thresholds.iter().filter(|&&t| attained >= t).count() as u64
    }

    fn effective(&self, id: WorkloadId, attained: f64) -> f64 {
        attained - self.base.get(&id).copied().unwrap_or(0.0)
    }

    fn promote_at(&self, job: &QueuedJob) -> Option<SimTime> {
        let ran = job.attained_gpu_s / job.gpus().max(1e-9);
        (ran > 0.0).then(|| job.enqueued_at + SimDuration::from_secs_f64(ran * self.promote_knob))
    }
}

impl Ranker for Tiresias {
    fn name(&self) -> &str {
        "tiresias"
    }

    fn queued_key(&mut self, job: &QueuedJob, now: SimTime) -> Key {
        let mut level = self.level(self.effective(job.id(), job.attained_gpu_s));
        if level > 0 && self.promote_at(job).is_some_and(|t| now >= t) {
            self.base.insert(job.id(), job.attained_gpu_s);
            level = 0;
        }
        (level, submit_ms(&job.workload))
    }

    fn running_key(&self, job: &RunningJob, now: SimTime) -> Key {
        (self.level(self.effective(job.workload.id, job.attained_gpu_s(now))), submit_ms(&job.workload))
    }

    fn may_preempt(&self, waiting: Key, running: Key) -> bool {
        waiting.0 < running.0
    }

    fn revisit_at(&self, job: &QueuedJob) -> Option<SimTime> {
        if self.level(self.effective(job.id(), job.attained_gpu_s)) == 0 {
            return None;
        }
        self.promote_at(job)
    }

    fn on_finished(&mut self, job: &RunningJob, _now: SimTime) {
        self.base.remove(&job.workload.id);
    }
}

/// Clairvoyant shortest remaining processing time, by remaining GPU-time (GPUs x remaining run
/// time): a lower-bound reference, not a policy an operator could run.
#[derive(Default)]
pub struct Srpt;

fn area(remaining_ms: u64, gpu_milli: u64) -> u64 {
    remaining_ms.saturating_mul(gpu_milli.max(1)) / 1000
}

impl Ranker for Srpt {
    fn name(&self) -> &str {
        "srpt"
    }

    fn is_clairvoyant(&self) -> bool {
        true
    }

    fn queued_key(&mut self, job: &QueuedJob, _now: SimTime) -> Key {
        let rem = job.workload.duration.map_or(u64::MAX, |d| d.as_millis().saturating_sub(job.progress.as_millis()));
        (area(rem, job.workload.gpu.total_gpu_milli()), submit_ms(&job.workload))
    }

    fn running_key(&self, job: &RunningJob, now: SimTime) -> Key {
        let rem =
            job.workload.duration.map_or(u64::MAX, |d| d.as_millis().saturating_sub(job.run_time(now).as_millis()));
        (area(rem, job.workload.gpu.total_gpu_milli()), submit_ms(&job.workload))
    }

    fn may_preempt(&self, waiting: Key, running: Key) -> bool {
        waiting.0 < running.0
    }
}

/// Size classes drome learns a duration distribution for: 1 GPU, 2-4, 5-8, more than 8.
const CLASSES: usize = 4;

fn class_of(gpus: f64) -> usize {
    match gpus {
        g if g <= 1.0 => 0,
        g if g <= 4.0 => 1,
        g if g <= 8.0 => 2,
        _ => 3,
    }
}

/// drome's ranker: a Gittins index learned from the jobs that finished. For each size class it
/// keeps the run times of completed jobs and, for a job that has run `a` seconds, computes
/// `G(a) = max over b > a of P(X <= b | X > a) / E[min(X, b) - a | X > a]`: the best rate at which
/// serving the job buys completions, given only how long it has run. The job's priority is
/// `G(a) / gpus`, completions per GPU-second. Under heavy-tailed run times (Philly's are) this
/// favours fresh jobs like LAS does, but knows which attained ages are likely to end soon. It
/// never reads durations: only run times of finished jobs, which any cluster observes.
///
/// Fixed parameters: `a` is looked up on a geometric grid (0, then 10 s x 1.25^k up to ~290 days);
/// the distribution is learned per (tenant, size class) from that pair's last 1,000 completions,
/// falling back to the size class over all tenants, then to all classes pooled, when a pair has
/// fewer than 32; before 32 completions in all the index is `1 / (a + 600 s)` (least attained
/// service). Tables are rebuilt every 500 completions (and whenever completions grow by a
/// quarter), which re-keys the queue. A waiting job preempts a running one only if its priority
/// is more than `margin` (2) times higher, and only after the victim ran the minimum runtime.
pub struct Drome {
    pub margin: f64,
    /// Learn a distribution per (tenant, size class) as well, used once it has enough samples.
    pub per_tenant: bool,
    grid: Vec<f64>,
    samples: [Vec<f64>; CLASSES],
    tables: [Option<Vec<f64>>; CLASSES],
    /// Completions kept per (tenant, size class): the most recent ones (0 keeps all).
    pub window: usize,
    /// Tables are rebuilt after this many completions (and when completions grow by a quarter).
    pub refresh_every: usize,
    tenant_samples: BTreeMap<(u32, usize), VecDeque<f64>>,
    tenant_tables: FxHashMap<(u32, usize), Vec<f64>>,
    pooled: Option<Vec<f64>>,
    total: usize,
    at_refresh: usize,
    epoch: u64,
}

const MIN_SAMPLES: usize = 32;

impl Default for Drome {
    fn default() -> Self {
        let mut grid = vec![0.0];
        let mut a = 10.0;
        while a < 2.5e7 {
            grid.push(a);
            a *= 1.25;
        }
        Drome {
            margin: 2.0,
            per_tenant: true,
            grid,
            samples: Default::default(),
            tables: Default::default(),
            window: 1000,
            refresh_every: 500,
            tenant_samples: BTreeMap::new(),
            tenant_tables: FxHashMap::default(),
            pooled: None,
            total: 0,
            at_refresh: 0,
            epoch: 0,
        }
    }
}

/// Gittins index at every grid point for the sorted `x`.
fn gittins_table(grid: &[f64], x: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mut prefix = Vec::with_capacity(x.len() + 1);
    prefix.push(0.0);
    for v in x {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + v);
    }
    let total = prefix.last().copied().unwrap_or(0.0);
    // P(X > t) and E[min(X, t)] on the empirical distribution.
    let surv = |t: f64| (x.len() - x.partition_point(|v| *v <= t)) as f64 / n;
    let min_mean = |t: f64| {
        let k = x.partition_point(|v| *v <= t);
        (prefix[k] + t * (x.len() - k) as f64) / n
    };
    let s: Vec<f64> = grid.iter().map(|&t| surv(t)).collect();
    let m: Vec<f64> = grid.iter().map(|&t| min_mean(t)).collect();
    let mut out = vec![0.0; grid.len()];
    for i in 0..grid.len() {
        if s[i] <= 0.0 {
            out[i] = if i > 0 { out[i - 1] } else { 1.0 / 600.0 };
            continue;
        }
        let mut best = 0.0f64;
        for j in i + 1..grid.len() {
            let work = m[j] - m[i];
            if work > 0.0 {
                best = best.max((s[i] - s[j]) / work);
            }
        }
        // Serving to completion.
        let work = total / n - m[i];
        if work > 0.0 {
            best = best.max(s[i] / work);
        }
        out[i] = if best > 0.0 {
            best
        } else if i > 0 {
            out[i - 1]
        } else {
            1.0 / 600.0
        };
    }
    out
}

impl Drome {
    fn refresh(&mut self) {
        let mut all: Vec<f64> = Vec::with_capacity(self.total);
        for c in 0..CLASSES {
            self.samples[c].sort_by(f64::total_cmp);
            all.extend_from_slice(&self.samples[c]);
            self.tables[c] =
                (self.samples[c].len() >= MIN_SAMPLES).then(|| gittins_table(&self.grid, &self.samples[c]));
        }
        all.sort_by(f64::total_cmp);
        self.tenant_tables.clear();
        for (k, v) in &self.tenant_samples {
            if v.len() >= MIN_SAMPLES {
                let mut v: Vec<f64> = v.iter().copied().collect();
                v.sort_by(f64::total_cmp);
                self.tenant_tables.insert(*k, gittins_table(&self.grid, &v));
            }
        }
        self.pooled = (all.len() >= MIN_SAMPLES).then(|| gittins_table(&self.grid, &all));
        self.at_refresh = self.total;
        self.epoch += 1;
    }

    /// Completions per GPU-second for a job of `gpus` that has run `ran_s` seconds.
    fn priority(&self, tenant: u32, gpus: f64, ran_s: f64) -> f64 {
        let gpus = gpus.max(1e-3);
        let c = class_of(gpus);
        let table = self.tenant_tables.get(&(tenant, c)).or(self.tables[c].as_ref()).or(self.pooled.as_ref());
        let g = match table {
            Some(t) => {
                let i = self.grid.partition_point(|&a| a <= ran_s).saturating_sub(1);
                t[i]
            }
            None => {
                // Least attained service on the same grid, so keys stay put between rebuilds.
                let i = self.grid.partition_point(|&a| a <= ran_s).saturating_sub(1);
                1.0 / (self.grid[i] + 600.0)
            }
        };
        g / gpus
    }

    fn key(&self, w: &model::Workload, ran_s: f64) -> Key {
        let p = self.priority(w.tenant.0, w.gpu.total_gpus(), ran_s);
        (f64_key(1.0 / p.max(1e-300)), submit_ms(w))
    }
}

impl Ranker for Drome {
    fn name(&self) -> &str {
        "drome"
    }

    fn queued_key(&mut self, job: &QueuedJob, _now: SimTime) -> Key {
        self.key(&job.workload, job.attained_gpu_s / job.gpus().max(1e-3))
    }

    fn running_key(&self, job: &RunningJob, now: SimTime) -> Key {
        self.key(&job.workload, job.attained_gpu_s(now) / job.gpus().max(1e-3))
    }

    fn may_preempt(&self, waiting: Key, running: Key) -> bool {
        key_f64(running.0) > self.margin * key_f64(waiting.0)
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn on_finished(&mut self, job: &RunningJob, now: SimTime) {
        let ran = job.run_time(now).as_secs_f64();
        let c = class_of(job.gpus());
        self.samples[c].push(ran);
        if self.per_tenant {
            let v = self.tenant_samples.entry((job.workload.tenant.0, c)).or_default();
            v.push_back(ran);
            if self.window > 0 && v.len() > self.window {
                v.pop_front();
            }
        }
        self.total += 1;
        let since = self.total - self.at_refresh;
        if since >= (self.at_refresh / 4).max(64) || since >= self.refresh_every {
            self.refresh();
        }
    }
}

/// `tiresias` with its defaults.
pub fn tiresias(config: PreemptConfig) -> PriorityPolicy<Tiresias> {
    PriorityPolicy::new(Tiresias::default(), config)
}

/// `srpt` with its defaults.
pub fn srpt(config: PreemptConfig) -> PriorityPolicy<Srpt> {
    PriorityPolicy::new(Srpt, config)
}

/// `drome` with its defaults.
pub fn drome(config: PreemptConfig) -> PriorityPolicy<Drome> {
    PriorityPolicy::new(Drome::default(), config)
}

/// `drome` with a chosen preemption margin and tenant learning, for studies of its parameters.
pub fn drome_with(
    config: PreemptConfig,
    margin: f64,
    per_tenant: bool,
    window: usize,
    refresh_every: usize,
) -> PriorityPolicy<Drome> {
    PriorityPolicy::new(Drome { margin, per_tenant, window, refresh_every, ..Drome::default() }, config)
}
