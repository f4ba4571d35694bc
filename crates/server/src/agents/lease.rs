//! Leases: how long a node's agent may stay silent, the heap of deadlines the sweep reads (it
//! costs what expires), and the grace after which a lost node's runs end as lost.

use super::*;

/// Lease timing.
#[derive(Clone, Copy, Debug)]
pub struct LeaseConfig {
    pub heartbeat: Duration,
    pub lease: Duration,
    /// How long after a node's lease ran out its runs end as lost (and their GPUs go to other
    /// work). An agent that cannot renew its lease for a lease period kills its runs itself, so
    /// by then no copy of them runs on the lost node: no job ever has two live copies.
    pub grace: Duration,
    /// How long a node's credential serves before the server gives it a new one (in a
    /// heartbeat's answer; the old one works until the node uses the new).
    pub credential_rotation: Duration,
}

impl LeaseConfig {
    /// Leases of `lease`, renewed every `heartbeat`, with the default grace.
    pub fn new(heartbeat: Duration, lease: Duration) -> LeaseConfig {
        LeaseConfig {
            heartbeat,
            lease,
            grace: Duration::from_secs(2),
            credential_rotation: Duration::from_secs(86_400),
        }
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig::new(Duration::from_secs(5), Duration::from_secs(20))
    }
}

impl RemoteNodes {
    /// Nodes whose lease has run out take no new work; their runs end as lost a grace later,
    /// unless the node is back by then. Returns the nodes just lost. Costs what expires.
    pub fn expire(&self) -> Vec<String> {
        let now = Instant::now();
        let grace = self.config.grace;
        let mut lost = Vec::new();
        let mut guard = self.lock();
        let inner = &mut *guard;
        while let Some(std::cmp::Reverse((due, _))) = inner.deadlines.peek() {
            if *due > now {
                break;
            }
            let Some(std::cmp::Reverse((_, name))) = inner.deadlines.pop() else { break };
            let Some(slot) = inner.slots.get_mut(&name) else { continue };
            if slot.lease_until.is_some_and(|t| t <= now) {
                slot.lease_until = None;
                inner.grace_deadlines.push(std::cmp::Reverse((now + grace, name.clone())));
                lost.push(name);
            }
        }
        let mut ended = 0usize;
        while let Some(std::cmp::Reverse((due, _))) = inner.grace_deadlines.peek() {
            if *due > now {
                break;
            }
            let Some(std::cmp::Reverse((_, name))) = inner.grace_deadlines.pop() else { break };
            // Back within its grace: its runs go on.
            let Some(slot) = inner.slots.get_mut(&name).filter(|s| s.lease_until.is_none()) else { continue };
            for (_, mut a) in slot.assigned.drain() {
                if let Some(tx) = a.done.take() {
                    let _ = tx.send(RunOutcome::Lost { message: format!("node {name} lost: its lease expired") });
                    ended += 1;
                }
            }
        }
        if !lost.is_empty() {
            inner.availability_changed.extend(lost.iter().cloned());
            let shown: Vec<&String> = lost.iter().take(8).collect();
            tracing::warn!(count = lost.len(), first = ?shown, "nodes lost: leases expired");
            self.wake.notify_one();
        }
        if ended > 0 {
            tracing::warn!(runs = ended, "runs on lost nodes ended after the lease grace");
        }
        lost
    }

    /// Names of nodes holding a lease.
    pub fn live_nodes(&self) -> Vec<String> {
        let inner = self.lock();
        inner.slots.iter().filter(|(_, s)| s.lease_until.is_some()).map(|(n, _)| n.clone()).collect()
    }

    /// Whether `node` has a live agent.
    pub fn is_live(&self, node: &str) -> bool {
        self.lock().slots.get(node).is_some_and(|s| s.lease_until.is_some())
    }
}
