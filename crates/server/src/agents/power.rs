//! Power: the draw each node reports, and the GPU and CPU caps its agent is asked to apply.

use super::*;

impl RemoteNodes {
    /// Nodes whose reported caps changed since the last call (each once).
    pub fn cap_reports_changed(&self) -> Vec<String> {
        self.lock().cap_reports_changed.drain().collect()
    }

    /// The GPU cap (watts per GPU) and CPU limit (watts) `node` reports applying, and whether
    /// it has a live agent.
    pub fn applied(&self, node: &str) -> (Option<f64>, Option<f64>, bool) {
        let inner = self.lock();
        match inner.slots.get(node) {
            Some(s) => (s.applied_cap, s.applied_cpu_cap, s.lease_until.is_some()),
            None => (None, None, false),
        }
    }

    /// Marks `node` with why its report was refused, and forgets the draw and the caps it
    /// reported last: the site's figures fall back to the model's for it, and caps it was asked
    /// to lower count as not applied (the site's held-back starts stay held) until a report
    /// passes. `None` clears the mark.
    pub(crate) fn set_problem(&self, node: &str, problem: Option<String>) {
        let mut inner = self.lock();
        match problem {
            Some(p) => {
                let slot = inner.slots.entry(node.to_string()).or_default();
                slot.power_watts = None;
                let had_caps = slot.applied_cap.take().is_some() | slot.applied_cpu_cap.take().is_some();
                slot.problem = Some(p);
                if had_caps {
                    inner.cap_reports_changed.insert(node.to_string());
                }
            }
            // The common case, every heartbeat: no allocation.
            None => {
                if let Some(slot) = inner.slots.get_mut(node) {
                    slot.problem = None;
                }
            }
        }
    }

    /// Why each node's last report was refused, for the nodes whose was.
    pub fn problems(&self) -> HashMap<String, String> {
        let inner = self.lock();
        inner.slots.iter().filter_map(|(n, s)| s.problem.clone().map(|p| (n.clone(), p))).collect()
    }

    /// Latest reported power draw per live node, watts.
    pub fn power(&self) -> HashMap<String, f64> {
        self.of_live_nodes(|s| s.power_watts)
    }

    /// `value` of every live node that has one, by name.
    fn of_live_nodes(&self, value: impl Fn(&Slot) -> Option<f64>) -> HashMap<String, f64> {
        let inner = self.lock();
        inner
            .slots
            .iter()
            .filter(|(_, s)| s.lease_until.is_some())
            .filter_map(|(n, s)| value(s).map(|w| (n.clone(), w)))
            .collect()
    }

    /// The GPU power cap each live node reports applying, watts per GPU.
    pub fn applied_caps(&self) -> HashMap<String, f64> {
        self.of_live_nodes(|s| s.applied_cap)
    }

    /// The CPU package power limit each live node reports applying, watts.
    pub fn applied_cpu_caps(&self) -> HashMap<String, f64> {
        self.of_live_nodes(|s| s.applied_cpu_cap)
    }

    /// Asks `node` to hold its CPU packages to `cap` watts in all (`None`: no limit); its held
    /// heartbeats answer at once. Asking again for the same limit changes nothing.
    pub fn set_cpu_power_cap(&self, node: &str, cap: Option<f64>) {
        let mut inner = self.lock();
        let slot = inner.slots.entry(node.to_string()).or_default();
        if slot.asked_cpu_cap != cap {
            slot.asked_cpu_cap = cap;
            slot.wake(node);
        }
    }

    /// Asks `nodes` to apply a GPU power cap (`None`: none); their held heartbeats answer at once.
    /// Asking again for the cap a node was already asked for changes nothing.
    pub fn set_gpu_power_cap(&self, nodes: &[String], cap: Option<f64>) {
        let mut inner = self.lock();
        for n in nodes {
            let slot = inner.slots.entry(n.clone()).or_default();
            if slot.asked_cap != cap {
                slot.asked_cap = cap;
                slot.wake(n);
            }
        }
    }
}
