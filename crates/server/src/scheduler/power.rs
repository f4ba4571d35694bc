//! The scheduler's side of power: in the dynamic power mode and with price caps, the GPU and CPU
//! caps each node's agent is asked to apply, and the starts held until the agents apply them.

use super::Scheduler;
use super::live::LiveState;
use model::NodeId;
use model::SimTime;
use sched::Decision;
use std::collections::{HashMap, HashSet};

/// What the caps asked of the agents follow: the guard's caps epoch, the hour's ceiling (its
/// bits) and the admin's caps by site (their bits).
type CapsBasis = (u64, u64, Vec<(String, u64)>);

/// What the agents were last asked for.
#[derive(Default)]
pub(super) struct AskedCaps {
    /// The guard's caps epoch, the hour's ceiling and the admin's site caps the asks followed.
    basis: Option<CapsBasis>,
    /// Nodes asked for a GPU cap below the board limit by the guard (watts per GPU), or for a CPU
    /// limit (watts): starts on their site wait until they apply it.
    lowered: HashMap<NodeId, (Option<f64>, Option<f64>)>,
    /// Of those, the nodes not known to apply it yet.
    awaiting: HashSet<NodeId>,
}

impl Scheduler {
    /// The price caps' ceiling this hour, fraction of the board limit (1: none).
    pub(super) fn hour_ceiling(&self, now_ms: i64) -> f64 {
        let Some(caps) = self.gpu_cap_by_hour.as_ref().filter(|c| !c.is_empty()) else { return 1.0 };
        let hour = ((now_ms - crate::year_start_ms(now_ms)).max(0) / 3_600_000) as usize % caps.len();
        caps[hour].clamp(0.0, 1.0)
    }

    /// Dynamic power mode and price caps: asks every GPU node's agent for the lowest of the
    /// admin's cap, the guard's cap for the jobs on it and, in a dear hour, the price caps'
    /// ceiling; holds back this round's starts on a site until its agents report the guard's
    /// lowered caps applied, so new work never draws beside GPUs that are still above the caps its
    /// admission counted on. Idempotent: asking again changes nothing.
    ///
    /// The nodes are walked only when what the caps follow changed (the guard's caps, the hour's
    /// ceiling, the admin's caps); otherwise a round looks only at the nodes still to apply a
    /// lowered cap and those whose reports changed, so it costs what changed.
    pub(super) fn ask_power_caps(
        &mut self,
        live: &mut LiveState,
        decisions: Vec<Decision>,
        now: SimTime,
    ) -> Vec<Decision> {
        let Some(remote) = self.st.remote.clone() else { return decisions };
        let guard = self.guard.as_ref().filter(|_| self.st.dynamic_caps);
        if guard.is_none() && self.gpu_cap_by_hour.is_none() {
            return decisions;
        }
        let ceiling = self.hour_ceiling(now.as_millis() as i64);
        let fleet = self.st.fleet.clone();
        let admin = self.st.site_caps.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut admin_basis: Vec<(String, u64)> = admin.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect();
        admin_basis.sort();
        let basis = (guard.map_or(0, |g| g.caps_epoch()), ceiling.to_bits(), admin_basis);
        let board_of = |id: NodeId| {
            let node = fleet.node(id);
            fleet.node_gpu_model(id).filter(|_| node.gpu_count > 0).map(|m| m.board_power_watts)
        };
        if self.asked_caps.basis.as_ref() != Some(&basis) {
            // Per node, the lowest cap (fraction of the board limit) of the jobs on it.
            let mut fraction = vec![1.0f64; fleet.nodes.len()];
            for (id, p) in live.cluster.allocations().filter(|_| guard.is_some()) {
                let cap = guard.map_or(1.0, |g| g.job_cap(*id));
                for m in &p.members {
                    if let Some(f) = fraction.get_mut(m.node.index()) {
                        *f = f.min(cap);
                    }
                }
            }
            let hosts_capped = guard.map_or(&[][..], |g| g.hosts_capped());
            let mut lowered = HashMap::new();
            for id in fleet.node_ids() {
                let Some(board) = board_of(id) else { continue };
                let node = fleet.node(id);
                let site = node.site.index();
                let ours = Some(fraction[id.index()]).filter(|&f| f < 1.0).map(|f| (f * board).floor());
                let theirs = fleet.sites.get(site).and_then(|s| admin.get(&s.name)).copied();
                // The price caps' ceiling, in dear hours only.
                let dear = Some(ceiling).filter(|&c| c < 1.0).map(|c| (c * board).round());
                let want = [ours, theirs, dear].into_iter().flatten().reduce(f64::min);
                remote.set_gpu_power_cap(std::slice::from_ref(&node.name), want);
                // The site's worst case counts its GPU nodes' CPUs at their typical draw: their
                // packages are held there until the site no longer needs it.
                let cpu = hosts_capped
                    .get(site)
                    .copied()
                    .unwrap_or(false)
                    .then(|| energy::it_power::NodePower::of(&fleet, id).cpu_typical_watts.floor());
                remote.set_cpu_power_cap(&node.name, cpu);
                if ours.is_some() || cpu.is_some() {
                    lowered.insert(id, (ours, cpu));
                }
            }
            let _ = remote.cap_reports_changed();
            self.asked_caps.awaiting = lowered.keys().copied().collect();
            self.asked_caps.lowered = lowered;
            self.asked_caps.basis = Some(basis);
        } else {
            for name in remote.cap_reports_changed() {
                if let Some(&id) = self.st.node_ids.get(&name)
                    && self.asked_caps.lowered.contains_key(&id)
                {
                    self.asked_caps.awaiting.insert(id);
                }
            }
        }
        // Of the nodes held lower, those whose agent has not applied it yet hold their site.
        let asked = &mut self.asked_caps;
        asked.awaiting.retain(|id| {
            let Some(&(ours, cpu)) = asked.lowered.get(id) else { return false };
            let board = board_of(*id).unwrap_or(0.0);
            let (gpu_has, cpu_has, is_live) = remote.applied(&fleet.node(*id).name);
            is_live
                && (ours.is_some_and(|w| gpu_has.unwrap_or(board) > w + 0.5)
                    || cpu.is_some_and(|w| cpu_has.is_none_or(|has| has > w + 0.5)))
        });
        let waiting_sites: HashSet<usize> =
            self.asked_caps.awaiting.iter().map(|id| fleet.node(*id).site.index()).collect();
        if waiting_sites.is_empty() {
            return decisions;
        }
        let mut kept = Vec::with_capacity(decisions.len());
        for d in decisions {
            let held = match &d {
                Decision::Start { job, placement } => {
                    placement.members.iter().any(|m| waiting_sites.contains(&fleet.node(m.node).site.index()))
                        && live.cluster.release(*job).is_ok()
                        && {
                            if let (Some(q), Some(seq)) = (live.queue.get(*job), live.queue.seq(*job)) {
                                self.policy.start_undone(q, seq, now);
                            }
                            true
                        }
                }
                Decision::Preempt { .. } => false,
            };
            if held {
                tracing::debug!(decision = ?d, "start held until the agents apply lower power caps");
            } else {
                kept.push(d);
            }
        }
        kept
    }
}
