//! The scheduler's side of power: in the dynamic power mode and with price caps, the GPU and CPU
//! caps each node's agent is asked to apply, and the starts held until the agents apply them.

use super::Scheduler;
use super::live::LiveState;
use model::SimTime;
use sched::Decision;
use std::collections::HashSet;

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
    pub(super) fn ask_power_caps(
        &mut self,
        live: &mut LiveState,
        decisions: Vec<Decision>,
        now: SimTime,
    ) -> Vec<Decision> {
        let Some(remote) = &self.st.remote else { return decisions };
        let guard = self.guard.as_ref().filter(|_| self.st.dynamic_caps);
        if guard.is_none() && self.gpu_cap_by_hour.is_none() {
            return decisions;
        }
        let ceiling = self.hour_ceiling(now.as_millis() as i64);
        let fleet = self.st.fleet.clone();
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
        let admin = self.st.site_caps.read().unwrap_or_else(|e| e.into_inner()).clone();
        let applied = remote.applied_caps();
        let applied_cpu = remote.applied_cpu_caps();
        let hosts_capped = guard.map_or(&[][..], |g| g.hosts_capped());
        let mut waiting_sites: HashSet<usize> = HashSet::new();
        for id in fleet.node_ids() {
            let node = fleet.node(id);
            let Some(board) = fleet.node_gpu_model(id).filter(|_| node.gpu_count > 0).map(|m| m.board_power_watts)
            else {
                continue;
            };
            let site = node.site.index();
            let ours = Some(fraction[id.index()]).filter(|&f| f < 1.0).map(|f| (f * board).floor());
            let theirs = fleet.sites.get(site).and_then(|s| admin.get(&s.name)).copied();
            // The price caps' ceiling, in dear hours only.
            let dear = Some(ceiling).filter(|&c| c < 1.0).map(|c| (c * board).round());
            let want = [ours, theirs, dear].into_iter().flatten().reduce(f64::min);
            remote.set_gpu_power_cap(std::slice::from_ref(&node.name), want);
            let has = applied.get(&node.name).copied().unwrap_or(board);
            if let Some(w) = ours
                && has > w + 0.5
                && remote.is_live(&node.name)
            {
                waiting_sites.insert(site);
            }
            // The site's worst case counts its GPU nodes' CPUs at their typical draw: their
            // packages are held there until the site no longer needs it.
            let cpu = hosts_capped
                .get(site)
                .copied()
                .unwrap_or(false)
                .then(|| energy::it_power::NodePower::of(&fleet, id).cpu_typical_watts.floor());
            remote.set_cpu_power_cap(&node.name, cpu);
            if let Some(w) = cpu
                && applied_cpu.get(&node.name).is_none_or(|&has| has > w + 0.5)
                && remote.is_live(&node.name)
            {
                waiting_sites.insert(site);
            }
        }
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
