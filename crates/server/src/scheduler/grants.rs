//! The federation's per-job start grants. A federated job starts only while the site holds the
//! federation lease and the federation has granted that job: the federation notes a job as
//! granted before it grants it, so when it loses the site it knows exactly which of its jobs
//! there may have started, and moves only the others.
//!
//! Grants live in memory only: after a restart the jobs waiting for one are listed again and
//! the federation grants them again (it noted them already, so nothing is lost).

use std::collections::{BTreeSet, HashSet};
use store::JobState;

/// The most ids a renewal grants, and the most waiting ids the site answers with.
pub(crate) const MAX_GRANT_IDS: usize = 10_000;

/// How often the sets are pruned against the live jobs, so ids of jobs gone without a hook
/// (another replica's changes, a store read anew) do not pile up.
const PRUNE_EVERY_MS: i64 = 10_000;

/// Whether a job may start, as far as the federation is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Not federated, or federated under the lease with a grant.
    Open,
    /// Federated and the site holds no lease.
    NoLease,
    /// Federated, under the lease, but not granted (yet).
    NoGrant,
}

#[derive(Debug, Default)]
pub(crate) struct Grants {
    /// Jobs the federation lets start; a grant lasts until the job starts or ends.
    granted: HashSet<i64>,
    /// Federated jobs a round would have started but held back for want of a grant.
    waiting: BTreeSet<i64>,
    /// The waiting set changed since it was last published.
    dirty: bool,
    /// When the sets were last pruned, Unix ms.
    pruned_ms: i64,
}

impl Grants {
    /// Whether job `id` (federated or not) may start now.
    pub fn gate(&self, id: i64, federated: bool, lease_open: bool) -> Gate {
        if !federated {
            Gate::Open
        } else if !lease_open {
            Gate::NoLease
        } else if self.granted.contains(&id) {
            Gate::Open
        } else {
            Gate::NoGrant
        }
    }

    /// The federation grants these jobs: they wait no more.
    pub fn grant(&mut self, ids: impl IntoIterator<Item = i64>) {
        for id in ids {
            self.granted.insert(id);
            self.dirty |= self.waiting.remove(&id);
        }
    }

    /// A federated job held back for want of a grant: the federation is told.
    pub fn held(&mut self, id: i64) {
        self.dirty |= self.waiting.insert(id);
    }

    /// A job started (its grant is used up) or ended (cancelled, failed, finished).
    pub fn done(&mut self, id: i64) {
        self.granted.remove(&id);
        self.dirty |= self.waiting.remove(&id);
    }

    /// Keeps the ids of jobs still waiting to start (`state_of` gives a live job's state):
    /// grants of pending or scheduled jobs, waits of pending ones. Runs at most every
    /// [`PRUNE_EVERY_MS`] unless `now_ms` is `None`.
    pub fn prune(&mut self, now_ms: Option<i64>, state_of: impl Fn(i64) -> Option<JobState>) {
        if let Some(now) = now_ms {
            if now - self.pruned_ms < PRUNE_EVERY_MS {
                return;
            }
            self.pruned_ms = now;
        }
        self.granted.retain(|id| matches!(state_of(*id), Some(JobState::Pending | JobState::Scheduled)));
        let before = self.waiting.len();
        self.waiting.retain(|id| state_of(*id) == Some(JobState::Pending));
        self.dirty |= self.waiting.len() != before;
    }

    /// The waiting ids, ascending, at most [`MAX_GRANT_IDS`], when they changed since last taken.
    pub fn take_waiting(&mut self) -> Option<Vec<i64>> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        Some(self.waiting.iter().take(MAX_GRANT_IDS).copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federated_jobs_need_the_lease_and_a_grant() {
        let mut g = Grants::default();
        assert_eq!(g.gate(1, false, false), Gate::Open, "plain jobs never wait");
        assert_eq!(g.gate(1, true, false), Gate::NoLease);
        assert_eq!(g.gate(1, true, true), Gate::NoGrant);
        g.held(1);
        g.held(3);
        assert_eq!(g.take_waiting(), Some(vec![1, 3]));
        assert_eq!(g.take_waiting(), None, "unchanged");
        g.grant([1]);
        assert_eq!(g.gate(1, true, true), Gate::Open);
        assert_eq!(g.gate(1, true, false), Gate::NoLease, "a grant does not stand for the lease");
        assert_eq!(g.take_waiting(), Some(vec![3]), "granted: no longer waiting");
        g.done(1);
        assert_eq!(g.gate(1, true, true), Gate::NoGrant, "a grant is used up by the start");
        assert_eq!(g.take_waiting(), None);
    }

    #[test]
    fn pruning_keeps_only_jobs_still_to_start() {
        let mut g = Grants::default();
        g.grant([1, 2, 3, 4]);
        g.held(5);
        g.held(6);
        let _ = g.take_waiting();
        let state = |id| match id {
            1 | 5 => Some(JobState::Pending),
            2 => Some(JobState::Scheduled),
            3 | 6 => Some(JobState::Assigned),
            _ => None,
        };
        g.prune(Some(PRUNE_EVERY_MS - 1), state);
        assert_eq!(g.granted.len(), 4, "not yet due");
        g.prune(Some(PRUNE_EVERY_MS), state);
        assert_eq!(g.granted, HashSet::from([1, 2]));
        assert_eq!(g.take_waiting(), Some(vec![5]));
        g.grant([9]);
        g.prune(Some(PRUNE_EVERY_MS + 1), state);
        assert!(g.granted.contains(&9), "pruned at most every {PRUNE_EVERY_MS} ms");
        g.prune(None, state);
        assert!(!g.granted.contains(&9), "forced");
    }

    #[test]
    fn at_most_the_cap_is_published() {
        let mut g = Grants::default();
        for id in (0..MAX_GRANT_IDS as i64 + 5).rev() {
            g.held(id);
        }
        let waiting = g.take_waiting().unwrap_or_default();
        assert_eq!(waiting.len(), MAX_GRANT_IDS);
        assert!(waiting.windows(2).all(|w| w[0] < w[1]) && waiting[0] == 0, "ascending, lowest first");
    }
}
