//! The rankers of the preemptive policies: Tiresias' discretized two-dimensional LAS, clairvoyant
//! SRPT (a reference), and drome's learned Gittins index.

use crate::prio::{Key, PreemptConfig, PriorityPolicy, Ranker, RunningJob, f64_key, key_f64};
use crate::queue::QueuedJob;
use model::{SimDuration, SimTime, WorkloadId};
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

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
/// Siblings: jobs a tenant submits together (same tenant, same GPU count, each within
/// `batch_gap` of the one before, at most [`BATCH_CAP`] to a batch: a sweep, a set of seeds) run
/// alike. A job's distribution is then a mixture: with weight `rho`, what its batch says (the run
/// times of siblings that finished, each spread evenly over a factor 2 either side in log
/// scale; or, while no sibling that ran longer than the job has finished, the class distribution
/// conditioned on
/// lasting at least as long as the longest-running unfinished sibling has run), and with weight
/// `1 - rho` the class distribution. `rho` is learned per size class: the share of finished jobs
/// whose run time was within a factor 2 of the median of the siblings that finished before them
/// (a Laplace estimate, 1/2 before any). So a sibling of a job known to run long waits behind it
/// instead of sharing the GPUs with it, and a job whose siblings finished gains priority as it
/// nears their run time, as SRPT would give it.
///
/// Fixed parameters: `a` is looked up on a geometric grid (0, then 10 s x 1.25^k up to ~290 days);
/// the distribution is learned per (tenant, size class) from that pair's last 1,000 completions,
/// shrunk towards the size class over all tenants (or all classes pooled while the class has
/// fewer than 32 completions) as if that gave 32 samples: with `n` of its own, the pair's weight
/// is `n / (n + 32)`. Before 32 completions in all the index is `1 / (a + 600 s)` (least attained
/// service). Tables are rebuilt every 500 completions (and whenever completions grow by a
/// quarter), which re-keys the queue (and takes in the new `rho`). Siblings are at most one hour
/// apart: on the Philly history, the log run times of a tenant's consecutive jobs of one GPU
/// count submitted under an hour apart correlate at 0.65 to 0.99 (depending on size and gap),
/// and at 0.2 to 0.55 beyond a day. A waiting job preempts a running one only if its priority is
/// more than `margin` (2) times higher, and only after the victim ran the minimum runtime.
pub struct Drome {
    pub margin: f64,
    /// Learn a distribution per (tenant, size class) as well, shrunk towards the class one.
    pub per_tenant: bool,
    /// Learn from siblings (jobs submitted together); 0 s turns it off.
    pub batch_gap: SimDuration,
    grid: Vec<f64>,
    samples: [Vec<f64>; CLASSES],
    tables: [Option<Table>; CLASSES],
    /// Completions kept per (tenant, size class): the most recent ones (0 keeps all).
    pub window: usize,
    /// Tables are rebuilt after this many completions (and when completions grow by a quarter).
    pub refresh_every: usize,
    tenant_samples: BTreeMap<(u32, usize), VecDeque<f64>>,
    tenant_tables: FxHashMap<(u32, usize), Table>,
    pooled: Option<Table>,
    total: usize,
    at_refresh: usize,
    epoch: u64,
    /// The batch still open per (tenant, GPU milli): its index and its last submit time.
    open: FxHashMap<(u32, u64), (u32, SimTime)>,
    batch_of: FxHashMap<WorkloadId, u32>,
    /// Batches with members not yet finished (or still open to new ones), by number.
    batches: FxHashMap<u32, Batch>,
    next_batch: u32,
    /// Per size class: finished jobs whose siblings had finished before them, and how many of
    /// those ran within a factor 2 of their siblings' median.
    trials: [(u32, u32); CLASSES],
    /// `rho` per size class as of the last rebuild (keys change only when the queue is re-keyed).
    rho: [f64; CLASSES],
    stale: Vec<WorkloadId>,
    /// When the longest-running running member of a batch next crosses a grid point, which
    /// changes what its waiting siblings are told.
    crossings: BTreeSet<(SimTime, u32)>,
    /// Last key of each running job: until when it holds, for which epoch and batch version.
    memo: RefCell<FxHashMap<WorkloadId, (SimTime, u64, u32, Key)>>,
}

/// A finished sibling's run time `d` stands for run times `d x f` for each `f` here, equally
/// likely: within the factor 2 that `rho` measures how often a sibling keeps to.
const SPREAD: [f64; 5] = [0.5, std::f64::consts::FRAC_1_SQRT_2, 1.0, std::f64::consts::SQRT_2, 2.0];

/// Most jobs in one batch of siblings.
pub const BATCH_CAP: usize = 64;

const MIN_SAMPLES: usize = 32;

/// A member of a batch as drome last saw it.
#[derive(Clone, Copy, Debug)]
enum Member {
    /// Waiting, having run this many seconds.
    Waiting(f64),
    /// Running since `since`, having run `base` seconds before.
    Running {
        since: SimTime,
        base: f64,
    },
    Done,
}

#[derive(Clone, Debug, Default)]
struct Batch {
    members: Vec<(WorkloadId, Member)>,
    /// Run times of the members that finished, ascending.
    done: Vec<f64>,
    /// Bumped whenever what the batch tells its members may have changed.
    version: u32,
    /// This batch's entry in [`Drome::crossings`].
    crossing: Option<SimTime>,
}

/// A learned distribution on the grid: its Gittins index, `P(X > t)`, `E[min(X, t)]` and `E[X]`.
#[derive(Clone, Debug)]
struct Table {
    index: Vec<f64>,
    surv: Vec<f64>,
    min_mean: Vec<f64>,
    mean: f64,
}

/// What a job's siblings say about it.
#[derive(Clone, Copy, Debug)]
enum Evidence<'a> {
    None,
    /// Run times of finished siblings longer than the job has run, ascending.
    Done(&'a [f64]),
    /// An unfinished sibling has run as long as grid point `l`, further than the job.
    Censored(usize),
}

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
            batch_gap: SimDuration::from_secs(3600),
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
            open: FxHashMap::default(),
            batch_of: FxHashMap::default(),
            batches: FxHashMap::default(),
            next_batch: 0,
            trials: [(0, 0); CLASSES],
            rho: [0.5; CLASSES],
            stale: Vec::new(),
            crossings: BTreeSet::new(),
            memo: RefCell::new(FxHashMap::default()),
        }
    }
}

/// The learned distribution of the sorted `x` on `grid`, with its Gittins index at every point.
fn gittins_table(grid: &[f64], x: &[f64]) -> Table {
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
    table_from(grid, s, m, total / n)
}

/// The mixture `w x a + (1 - w) x b` of two learned distributions, with its Gittins index.
fn mixed_table(grid: &[f64], a: &Table, w: f64, b: &Table) -> Table {
    let mix = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| w * p + (1.0 - w) * q).collect::<Vec<f64>>();
    table_from(grid, mix(&a.surv, &b.surv), mix(&a.min_mean, &b.min_mean), w * a.mean + (1.0 - w) * b.mean)
}

/// The Gittins index at every grid point of the distribution with `P(X > t) = s`,
/// `E[min(X, t)] = m` on the grid and mean `mean`.
fn table_from(grid: &[f64], s: Vec<f64>, m: Vec<f64>, mean: f64) -> Table {
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
        let work = mean - m[i];
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
    Table { index: out, surv: s, min_mean: m, mean }
}

/// Gittins index at grid point `i` of the mixture `rho x evidence + (1 - rho) x table`, both
/// conditioned on the job having run `grid[i]`.
fn mixed_index(grid: &[f64], t: &Table, i: usize, ev: Evidence<'_>, rho: f64) -> f64 {
    let a = grid[i];
    // The class part, conditioned on X > a; without mass beyond a it drops out.
    let (wc, si) = if t.surv[i] > 0.0 { (1.0 - rho, t.surv[i]) } else { (0.0, 1.0) };
    let we = 1.0 - wc;
    let class_at = |j: usize| (t.surv[j] / si, (t.min_mean[j] - t.min_mean[i]) / si);
    let class_end = (t.mean - t.min_mean[i]) / si;
    let mut best = 0.0f64;
    let mut consider = |surv: f64, work: f64| {
        if work > 0.0 {
            best = best.max((1.0 - surv) / work);
        }
    };
    match ev {
        Evidence::None => return t.index[i],
        Evidence::Done(d) => {
            let n = d.len() as f64;
            let (mut k, mut below) = (0usize, 0.0f64);
            for (j, &g) in grid.iter().enumerate().skip(i + 1) {
                while k < d.len() && d[k] <= g {
                    below += d[k];
                    k += 1;
                }
                let (se, me) = ((d.len() - k) as f64 / n, (below + g * (d.len() - k) as f64) / n - a);
                let (sc, mc) = class_at(j);
                consider(we * se + wc * sc, we * me + wc * mc);
                if se <= 0.0 && (wc == 0.0 || sc <= 0.0) {
                    break; // nothing left beyond: every later point is this one
                }
            }
            let mean_d = d.iter().sum::<f64>() / n;
            consider(0.0, we * (mean_d - a) + wc * class_end);
        }
        Evidence::Censored(l) => {
            let gl = grid[l];
            let sl = t.surv[l];
            for (j, &g) in grid.iter().enumerate().skip(i + 1) {
                let (se, me) = if j < l {
                    (1.0, g - a)
                } else if sl > 0.0 {
                    (t.surv[j] / sl, gl - a + (t.min_mean[j] - t.min_mean[l]) / sl)
                } else {
                    (0.0, gl - a)
                };
                let (sc, mc) = class_at(j);
                consider(we * se + wc * sc, we * me + wc * mc);
                if se <= 0.0 && (wc == 0.0 || sc <= 0.0) {
                    break;
                }
            }
            let me = if sl > 0.0 { gl - a + (t.mean - t.min_mean[l]) / sl } else { gl - a };
            consider(0.0, we * me + wc * class_end);
        }
    }
    if best > 0.0 { best } else { t.index[i] }
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
        self.pooled = (all.len() >= MIN_SAMPLES).then(|| gittins_table(&self.grid, &all));
        self.tenant_tables.clear();
        for (&(tenant, c), v) in &self.tenant_samples {
            let mut v: Vec<f64> = v.iter().copied().collect();
            v.sort_by(f64::total_cmp);
            let own = gittins_table(&self.grid, &v);
            // Shrunk towards the class (or pooled) distribution, as if that one had given
            // MIN_SAMPLES samples of its own.
            let table = match self.tables[c].as_ref().or(self.pooled.as_ref()) {
                Some(base) if !v.is_empty() => {
                    let w = v.len() as f64 / (v.len() + MIN_SAMPLES) as f64;
                    Some(mixed_table(&self.grid, &own, w, base))
                }
                _ => (v.len() >= MIN_SAMPLES).then_some(own),
            };
            if let Some(t) = table {
                self.tenant_tables.insert((tenant, c), t);
            }
        }
        for (rho, &(n, hits)) in self.rho.iter_mut().zip(&self.trials) {
            *rho = (f64::from(hits) + 1.0) / (f64::from(n) + 2.0);
        }
        self.at_refresh = self.total;
        self.epoch += 1;
        self.memo.get_mut().clear();
    }

    fn bin(&self, ran_s: f64) -> usize {
        self.grid.partition_point(|&a| a <= ran_s).saturating_sub(1)
    }

    fn table(&self, tenant: u32, c: usize) -> Option<&Table> {
        self.tenant_tables.get(&(tenant, c)).or(self.tables[c].as_ref()).or(self.pooled.as_ref())
    }

    /// The batch `w` belongs to, opening one if it is the first of its siblings.
    fn batch_for(&mut self, w: &model::Workload) -> Option<u32> {
        if self.batch_gap == SimDuration::ZERO {
            return None;
        }
        if let Some(&b) = self.batch_of.get(&w.id) {
            return Some(b);
        }
        let k = (w.tenant.0, w.gpu.total_gpu_milli());
        let b = match self.open.get(&k) {
            Some(&(b, last))
                if w.submit_time.since(last) <= self.batch_gap
                    && self.batches.get(&b).is_some_and(|x| x.members.len() < BATCH_CAP) =>
            {
                b
            }
            other => {
                // The batch this one follows is closed now: forget it if all its members finished.
                if let Some(&(old, _)) = other
                    && self.batches.get(&old).is_some_and(|x| x.members.iter().all(|(_, m)| matches!(m, Member::Done)))
                {
                    self.batches.remove(&old);
                }
                let b = self.next_batch;
                self.next_batch = self.next_batch.wrapping_add(1);
                self.batches.insert(b, Batch::default());
                b
            }
        };
        self.open.insert(k, (b, w.submit_time));
        if let Some(x) = self.batches.get_mut(&b) {
            x.members.push((w.id, Member::Waiting(0.0)));
        }
        self.batch_of.insert(w.id, b);
        Some(b)
    }

    /// Records `id`'s new state in its batch at `now`.
    fn set_member(&mut self, id: WorkloadId, m: Member, now: SimTime) {
        let Some(&b) = self.batch_of.get(&id) else { return };
        let Some(batch) = self.batches.get_mut(&b) else { return };
        let Some(slot) = batch.members.iter_mut().find(|(x, _)| *x == id) else { return };
        let same = match (slot.1, m) {
            (Member::Waiting(x), Member::Waiting(y)) => x == y,
            (Member::Running { since: s1, base: b1 }, Member::Running { since: s2, base: b2 }) => s1 == s2 && b1 == b2,
            (Member::Done, Member::Done) => true,
            _ => false,
        };
        if same {
            return;
        }
        slot.1 = m;
        batch.version = batch.version.wrapping_add(1);
        self.update_crossing(b, now);
    }

    /// Schedules the next time the longest-running running member of batch `b` crosses a grid
    /// point after `now`.
    fn update_crossing(&mut self, b: u32, now: SimTime) {
        let Some(batch) = self.batches.get(&b) else { return };
        if let Some(t) = batch.crossing {
            self.crossings.remove(&(t, b));
        }
        let longest = batch
            .members
            .iter()
            .filter_map(|(_, m)| match *m {
                Member::Running { since, base } => Some((base + now.since(since).as_secs_f64(), since, base)),
                _ => None,
            })
            .max_by(|x, y| x.0.total_cmp(&y.0));
        let next = longest.and_then(|(age, since, base)| {
            let g = *self.grid.get(self.bin(age) + 1)?;
            Some((since + SimDuration::from_secs_f64((g - base).max(0.0))).max(now + SimDuration(1)))
        });
        if let Some(x) = self.batches.get_mut(&b) {
            x.crossing = next;
        }
        if let Some(t) = next {
            self.crossings.insert((t, b));
        }
    }

    /// What `id`'s siblings say about it at `now`, having run up to grid point `i`.
    fn evidence(&self, id: WorkloadId, i: usize, now: SimTime) -> Evidence<'_> {
        let Some(batch) = self.batch_of.get(&id).and_then(|b| self.batches.get(b)) else { return Evidence::None };
        let a = self.grid[i];
        let from = batch.done.partition_point(|&d| d <= a);
        if from < batch.done.len() {
            return Evidence::Done(&batch.done[from..]);
        }
        let longest = batch
            .members
            .iter()
            .filter(|(x, _)| *x != id)
            .map(|(_, m)| match *m {
                Member::Waiting(r) => r,
                Member::Running { since, base } => base + now.since(since).as_secs_f64(),
                Member::Done => 0.0,
            })
            .fold(0.0f64, f64::max);
        let l = self.bin(longest);
        if l > i { Evidence::Censored(l) } else { Evidence::None }
    }

    /// Completions per GPU-second for a job of `gpus` at grid point `i` given `ev`.
    fn priority(&self, tenant: u32, gpus: f64, i: usize, ev: Evidence<'_>) -> f64 {
        let gpus = gpus.max(1e-3);
        let c = class_of(gpus);
        let g = match self.table(tenant, c) {
            Some(t) => mixed_index(&self.grid, t, i, ev, self.rho[c]),
            // Least attained service on the same grid, so keys stay put between rebuilds.
            None => 1.0 / (self.grid[i] + 600.0),
        };
        g / gpus
    }

    fn key(&self, w: &model::Workload, i: usize, ev: Evidence<'_>) -> Key {
        let p = self.priority(w.tenant.0, w.gpu.total_gpus(), i, ev);
        (f64_key(1.0 / p.max(1e-300)), submit_ms(w))
    }

    fn mark_waiting_siblings(&mut self, id: WorkloadId) {
        if let Some(batch) = self.batch_of.get(&id).and_then(|b| self.batches.get(b)) {
            self.stale.extend(
                batch.members.iter().filter(|(x, m)| *x != id && matches!(m, Member::Waiting(_))).map(|(x, _)| *x),
            );
        }
    }
}

impl Ranker for Drome {
    fn name(&self) -> &str {
        "drome"
    }

    fn queued_key(&mut self, job: &QueuedJob, now: SimTime) -> Key {
        let ran = job.attained_gpu_s / job.gpus().max(1e-3);
        if self.batch_for(&job.workload).is_some() {
            self.set_member(job.id(), Member::Waiting(ran), now);
        }
        let i = self.bin(ran);
        self.key(&job.workload, i, self.evidence(job.id(), i, now))
    }

    fn running_key(&self, job: &RunningJob, now: SimTime) -> Key {
        let id = job.workload.id;
        let version = self.batch_of.get(&id).and_then(|b| self.batches.get(b)).map_or(0, |x| x.version);
        if let Some(&(until, epoch, v, k)) = self.memo.borrow().get(&id)
            && now < until
            && epoch == self.epoch
            && v == version
        {
            return k;
        }
        let base = job.attained_at_start / job.gpus().max(1e-3);
        let i = self.bin(base + now.since(job.started).as_secs_f64());
        let k = self.key(&job.workload, i, self.evidence(id, i, now));
        // The key holds until the job's run time reaches the next grid point.
        let until = self.grid.get(i + 1).map_or(SimTime(u64::MAX), |&g| {
            (job.started + SimDuration::from_secs_f64((g - base).max(0.0))).max(now + SimDuration(1))
        });
        self.memo.borrow_mut().insert(id, (until, self.epoch, version, k));
        k
    }

    fn may_preempt(&self, waiting: Key, running: Key) -> bool {
        key_f64(running.0) > self.margin * key_f64(waiting.0)
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn take_stale(&mut self, now: SimTime) -> Vec<WorkloadId> {
        while let Some(&(t, b)) = self.crossings.first() {
            if t > now {
                break;
            }
            self.crossings.pop_first();
            let Some(batch) = self.batches.get_mut(&b) else { continue };
            batch.crossing = None;
            batch.version = batch.version.wrapping_add(1);
            self.stale.extend(batch.members.iter().filter(|(_, m)| matches!(m, Member::Waiting(_))).map(|(x, _)| *x));
            self.update_crossing(b, now);
        }
        std::mem::take(&mut self.stale)
    }

    fn on_started(&mut self, job: &QueuedJob, now: SimTime) {
        self.memo.get_mut().remove(&job.id());
        let base = job.attained_gpu_s / job.gpus().max(1e-3);
        self.set_member(job.id(), Member::Running { since: now, base }, now);
    }

    fn on_finished(&mut self, job: &RunningJob, now: SimTime) {
        let ran = job.run_time(now).as_secs_f64();
        let c = class_of(job.gpus());
        let id = job.workload.id;
        self.memo.get_mut().remove(&id);
        if let Some(&b) = self.batch_of.get(&id)
            && let Some(batch) = self.batches.get_mut(&b)
        {
            if !batch.done.is_empty() {
                let median = batch.done[batch.done.len() / 2];
                let hit = ((ran + 1.0) / (median + 1.0)).ln().abs() <= std::f64::consts::LN_2;
                self.trials[c].0 += 1;
                self.trials[c].1 += u32::from(hit);
            }
            for f in SPREAD {
                let d = ran * f;
                let at = batch.done.partition_point(|&x| x <= d);
                batch.done.insert(at, d);
            }
            self.set_member(id, Member::Done, now);
            self.mark_waiting_siblings(id);
            self.batch_of.remove(&id);
            // A batch that no job can join any more and whose members all finished is forgotten.
            let k = (job.workload.tenant.0, job.workload.gpu.total_gpu_milli());
            let open = self.open.get(&k).is_some_and(|&(ob, last)| ob == b && now.since(last) <= self.batch_gap);
            if !open && self.batches.get(&b).is_some_and(|x| x.members.iter().all(|(_, m)| matches!(m, Member::Done))) {
                self.batches.remove(&b);
                if self.open.get(&k).is_some_and(|&(ob, _)| ob == b) {
                    self.open.remove(&k);
                }
            }
        }
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

/// `drome` with its parameters chosen, for studies of them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DromeParams {
    pub margin: f64,
    pub per_tenant: bool,
    pub window: usize,
    pub refresh_every: usize,
    /// Siblings are submitted at most this far apart; zero learns nothing from siblings.
    pub batch_gap: SimDuration,
}

impl Default for DromeParams {
    /// drome's defaults.
    fn default() -> Self {
        let d = Drome::default();
        DromeParams {
            margin: d.margin,
            per_tenant: d.per_tenant,
            window: d.window,
            refresh_every: d.refresh_every,
            batch_gap: d.batch_gap,
        }
    }
}

/// `drome` with chosen parameters, for studies of them.
pub fn drome_with(config: PreemptConfig, p: DromeParams) -> PriorityPolicy<Drome> {
    let DromeParams { margin, per_tenant, window, refresh_every, batch_gap } = p;
    let d = Drome { margin, per_tenant, window, refresh_every, batch_gap, ..Drome::default() };
    PriorityPolicy::new(d, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demand::{Demand, ModelSet};
    use model::{GpuRequest, TenantId, Workload};
    use std::sync::Arc;

    fn workload(id: u32, tenant: u32, submit_s: u64) -> Arc<Workload> {
        let mut w = Workload::gpu_job(id, SimTime::from_secs(submit_s), GpuRequest::whole_gpus(1, 8), None);
        w.tenant = TenantId(tenant);
        Arc::new(w)
    }

    fn queued(w: &Arc<Workload>, now: SimTime) -> QueuedJob {
        let demand = Demand { cpu_milli: 0, memory_mib: 0, gpu: w.gpu, models: ModelSet::any(), node_features: 0 };
        QueuedJob::new(w.clone(), demand, now)
    }

    fn running(w: &Arc<Workload>, started: SimTime) -> RunningJob {
        let q = queued(w, started);
        RunningJob {
            workload: w.clone(),
            demand: q.demand,
            started,
            attained_at_start: 0.0,
            progress_at_start: SimDuration::ZERO,
        }
    }

    /// A ranker that has seen 64 one-GPU jobs of tenant 9, half of 10 minutes and half of 10 hours.
    fn trained() -> Drome {
        let mut d = Drome::default();
        for i in 0..64u32 {
            let w = workload(10_000 + i, 9, u64::from(i) * 86_400);
            let secs = if i % 2 == 0 { 600 } else { 36_000 };
            d.on_finished(&running(&w, w.submit_time), w.submit_time + SimDuration::from_secs(secs));
        }
        d
    }

    #[test]
    fn a_job_whose_siblings_finished_quickly_ranks_before_a_stranger() {
        let mut d = trained();
        let t0 = SimTime::from_secs(100 * 86_400);
        let (a, b, stranger) = (workload(1, 1, 100 * 86_400), workload(2, 1, 100 * 86_400 + 30), workload(3, 2, 0));
        let _ = d.queued_key(&queued(&a, t0), t0);
        let _ = d.queued_key(&queued(&b, t0), t0);
        let before = d.queued_key(&queued(&b, t0), t0);
        d.on_started(&queued(&a, t0), t0);
        let t1 = t0 + SimDuration::from_secs(120);
        d.on_finished(&running(&a, t0), t1);
        assert_eq!(d.take_stale(t1), vec![b.id], "the waiting sibling is re-keyed");
        let after = d.queued_key(&queued(&b, t1), t1);
        let other = d.queued_key(&queued(&stranger, t1), t1);
        assert!(after.0 < other.0, "sibling {after:?} vs stranger {other:?}");
        assert!(after.0 < before.0, "the finished sibling raised its priority: {after:?} vs {before:?}");
    }

    #[test]
    fn a_sibling_of_a_long_running_job_waits_behind_a_stranger() {
        let mut d = trained();
        let t0 = SimTime::from_secs(100 * 86_400);
        let (a, b, stranger) = (workload(1, 1, 100 * 86_400), workload(2, 1, 100 * 86_400 + 30), workload(3, 2, 0));
        let _ = d.queued_key(&queued(&a, t0), t0);
        let _ = d.queued_key(&queued(&b, t0), t0);
        d.on_started(&queued(&a, t0), t0);
        // The sibling has run past every short job: its batch is one of long jobs.
        let t1 = t0 + SimDuration::from_secs(3_600);
        assert!(d.take_stale(t1).contains(&b.id), "the longest sibling crossed grid points");
        let waiting = d.queued_key(&queued(&b, t1), t1);
        let other = d.queued_key(&queued(&stranger, t1), t1);
        assert!(waiting.0 > other.0, "sibling {waiting:?} vs stranger {other:?}");
        // Without sibling learning the two rank alike.
        let mut plain = Drome { batch_gap: SimDuration::ZERO, ..trained() };
        let x = plain.queued_key(&queued(&b, t1), t1);
        let y = plain.queued_key(&queued(&stranger, t1), t1);
        assert_eq!(x.0, y.0);
    }

    #[test]
    fn a_closed_batch_is_forgotten_once_its_members_finish() {
        let mut d = Drome::default();
        let t0 = SimTime::ZERO;
        let (a, b) = (workload(1, 1, 0), workload(2, 1, 10));
        for w in [&a, &b] {
            let _ = d.queued_key(&queued(w, t0), t0);
            d.on_started(&queued(w, t0), t0);
        }
        assert_eq!(d.batches.len(), 1);
        // The first finishes while the batch is still open: it stays.
        d.on_finished(&running(&a, t0), t0 + SimDuration::from_secs(600));
        assert_eq!(d.batches.len(), 1);
        // The last finishes after the gap: nothing can join any more.
        d.on_finished(&running(&b, t0), t0 + SimDuration::from_secs(7_200));
        assert!(d.batches.is_empty() && d.batch_of.is_empty() && d.open.is_empty());
    }

    #[test]
    fn batches_close_after_the_gap_and_at_the_cap() {
        let mut d = Drome::default();
        let t = SimTime::ZERO;
        for i in 0..(BATCH_CAP as u32 + 1) {
            let _ = d.queued_key(&queued(&workload(i, 1, 0), t), t);
        }
        let late = workload(500, 1, 3_601);
        let _ = d.queued_key(&queued(&late, t), t);
        assert_eq!(d.batch_of[&WorkloadId(0)], d.batch_of[&WorkloadId(BATCH_CAP as u32 - 1)]);
        assert_ne!(d.batch_of[&WorkloadId(0)], d.batch_of[&WorkloadId(BATCH_CAP as u32)]);
        assert_ne!(d.batch_of[&WorkloadId(BATCH_CAP as u32)], d.batch_of[&late.id]);
    }
}
