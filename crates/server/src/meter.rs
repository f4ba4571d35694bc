//! The energy meter: each node's reported draw, integrated between its heartbeats and shared
//! among the runs it holds by their share of its GPUs, is added to those runs' records.
//!
//! Sums wait here for a few seconds and are then added to the store in one transaction: a crash
//! loses at most that much measured energy (the usage report then counts that time as not
//! measured), never counts it twice. A gap between two reports longer than a lease is not
//! integrated: the node was not heard from.

use std::collections::HashMap;
use std::sync::Mutex;

/// A run on the node reporting, as this server assigned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MeteredRun {
    pub job_id: i64,
    pub generation: i64,
    /// Thousandths of a GPU this member holds on the node.
    pub gpu_milli: u32,
    /// The job's members: each adds its part of the time measured.
    pub members: u32,
}

#[derive(Default)]
struct Pending {
    joules: f64,
    ms: f64,
    fresh: bool,
}

#[derive(Default)]
struct Inner {
    /// Each node's last report: when (server ms) and its draw.
    last: HashMap<String, (i64, f64)>,
    /// Joules and measured milliseconds to add to each run, by (job, generation), and whether
    /// anything was added since the last take.
    pending: HashMap<(i64, i64), Pending>,
}

pub(crate) struct Meter {
    inner: Mutex<Inner>,
    /// Reports further apart than this are not integrated.
    max_gap_ms: i64,
}

impl Meter {
    pub fn new(max_gap_ms: i64) -> Meter {
        Meter { inner: Mutex::default(), max_gap_ms }
    }

    /// Node `node` (`node_gpus` GPUs) reports drawing `watts` at `now_ms` while running `runs`:
    /// the energy since its last report (the mean of the two draws times the time between) goes
    /// to the runs, each its share of the node's GPUs (the node's idle GPUs are no one's); on a
    /// node without GPUs the runs share it evenly.
    pub fn record(&self, node: &str, now_ms: i64, watts: f64, node_gpus: u32, runs: &[MeteredRun]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Two reports of a node handled at once may come here out of order: the older one is
        // not integrated (its span is in the newer one's).
        let previous = inner.last.get(node).copied();
        if previous.is_some_and(|(then_ms, _)| now_ms <= then_ms) {
            return;
        }
        inner.last.insert(node.to_string(), (now_ms, watts));
        let Some((then_ms, then_watts)) = previous else { return };
        let gap_ms = now_ms - then_ms;
        if gap_ms <= 0 || gap_ms > self.max_gap_ms || runs.is_empty() {
            return;
        }
        let joules = (then_watts + watts) / 2.0 * gap_ms as f64 / 1000.0;
        for run in runs {
            let share = if node_gpus > 0 {
                f64::from(run.gpu_milli) / (f64::from(node_gpus) * 1000.0)
            } else {
                1.0 / runs.len() as f64
            };
            let entry = inner.pending.entry((run.job_id, run.generation)).or_default();
            entry.joules += joules * share.min(1.0);
            entry.ms += gap_ms as f64 / f64::from(run.members.max(1));
            entry.fresh = true;
        }
    }

    /// The whole joules and milliseconds gathered, to add to the store; fractions stay for next
    /// time while the run is reported, and go rounded once a take finds nothing new for it (so
    /// ended runs leave no entry behind).
    pub fn take(&self) -> Vec<store::RunEnergy> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        inner.pending.retain(|&(job_id, generation), p| {
            let (whole_j, whole_ms) =
                if p.fresh { (p.joules.floor(), p.ms.floor()) } else { (p.joules.round(), p.ms.round()) };
            if whole_j >= 1.0 || whole_ms >= 1.0 {
                out.push(store::RunEnergy { job_id, generation, joules: whole_j as i64, measured_ms: whole_ms as i64 });
            }
            let keep = p.fresh;
            (p.joules, p.ms, p.fresh) = (p.joules - whole_j, p.ms - whole_ms, false);
            keep
        });
        out.sort_by_key(|e| (e.job_id, e.generation));
        out
    }

    /// Puts back sums the store did not take, to add next time.
    pub fn put_back(&self, energy: &[store::RunEnergy]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for e in energy {
            let entry = inner.pending.entry((e.job_id, e.generation)).or_default();
            entry.joules += e.joules as f64;
            entry.ms += e.measured_ms as f64;
            entry.fresh = true;
        }
    }
}

/// How often the meter's sums go to the store.
pub(crate) const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Adds the meter's sums to the store every [`FLUSH_EVERY`], while this server leads (its store
/// is fenced: once another replica leads, the writes are refused and the sums dropped).
pub(crate) async fn flush_loop(meter: std::sync::Arc<Meter>, store: store::Store) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush(&meter, &store).await;
    }
}

pub(crate) async fn flush(meter: &Meter, store: &store::Store) {
    let energy = meter.take();
    if energy.is_empty() {
        return;
    }
    match store.add_run_energy(&energy).await {
        Ok(()) => {}
        Err(store::StoreError::Fenced { .. }) => {}
        Err(e) => {
            tracing::warn!(error = %e, runs = energy.len(), "measured energy not written; kept for the next try");
            meter.put_back(&energy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(job_id: i64, gpu_milli: u32, members: u32) -> MeteredRun {
        MeteredRun { job_id, generation: 1, gpu_milli, members }
    }

    #[test]
    fn draw_between_reports_goes_to_the_runs_by_their_share_of_the_nodes_gpus() {
        let meter = Meter::new(10_000);
        let runs = [run(1, 4000, 2), run(2, 2000, 1)];
        meter.record("n1", 0, 1000.0, 8, &runs);
        meter.record("n1", 2000, 3000.0, 8, &runs);
        // Mean 2,000 W for 2 s: 4,000 J; half the GPUs to job 1, a quarter to job 2.
        let got = meter.take();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].joules, got[0].measured_ms), (2000, 1000), "one of its two members");
        assert_eq!((got[1].joules, got[1].measured_ms), (1000, 2000));
        assert!(meter.take().is_empty(), "taken once");
    }

    #[test]
    fn a_gap_past_the_limit_is_not_integrated_and_fractions_wait() {
        let meter = Meter::new(1000);
        let runs = [run(1, 1000, 1)];
        meter.record("n1", 0, 500.0, 8, &runs);
        meter.record("n1", 5000, 500.0, 8, &runs);
        assert!(meter.take().is_empty(), "5 s unheard of");
        meter.record("n1", 5010, 500.0, 8, &runs);
        // 500 W x 10 ms / 8 GPUs = 0.625 J: nothing whole yet but the 10 ms measured.
        let got = meter.take();
        assert_eq!((got[0].joules, got[0].measured_ms), (0, 10));
        meter.record("n1", 5020, 500.0, 8, &runs);
        assert_eq!(meter.take()[0].joules, 1, "0.625 + 0.625");
        // Nothing new: the 0.25 J left goes rounded (to nothing) and the entry with it.
        assert!(meter.take().is_empty());
        assert!(meter.inner.lock().unwrap().pending.is_empty(), "an ended run leaves nothing behind");
        // A report older than the last one is not integrated.
        meter.record("n1", 5015, 500.0, 8, &runs);
        assert!(meter.take().is_empty());
        meter.put_back(&[store::RunEnergy { job_id: 1, generation: 1, joules: 7, measured_ms: 3 }]);
        assert_eq!(meter.take()[0].joules, 7);
    }
}
