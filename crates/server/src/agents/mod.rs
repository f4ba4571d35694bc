//! Remote nodes: the [`NodeExecutor`] whose work runs on node agents. A run is an assignment
//! that the node's agent picks up on its next heartbeat; it ends when the agent reports the exit,
//! or when the node's lease expires (the node is lost). Dropping a run's future (cancellation,
//! preemption) takes the assignment back: the agent, still reporting the run, is told to kill it.
//! Every assignment carries the job's generation (its start count); a run of any other
//! generation is stale and killed, so no job runs twice at once. A run asked to stop
//! ([`NodeExecutor::stop`]) stays assigned, marked stopping: the node is told to kill it, and its
//! future ends only when the node's report no longer lists it (or the node is lost), so its GPUs
//! go to other work only once its processes are gone.
//!
//! One concern per module, all over one lock on the nodes' `Slot`s (a heartbeat touches
//! several at once): `lease` (leases, their deadlines, lost nodes), `runs` (assignments, a
//! heartbeat's answer, acknowledgements, the executor), `batch` (agent processes heartbeating
//! for many nodes), `logs` (output asked of a node), `power` (draws and caps). Credentials
//! and addresses stay here.

use crate::node::{NodeExecutor, RunFuture, RunOutcome, RunSpec};
use api::RunKey;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};

mod batch;
pub(crate) mod checks;
mod lease;
mod logs;
mod power;
mod runs;

use batch::BatchSession;
pub use lease::LeaseConfig;
use runs::Assigned;

#[derive(Default)]
struct Slot {
    /// `None`: never heard from (or lost).
    lease_until: Option<Instant>,
    address: String,
    /// Whether its agent runs container images (it found a runtime).
    runs_images: bool,
    assigned: HashMap<(i64, u32), Assigned>,
    /// Exits reported before their run was registered here (after a server restart).
    early_exits: HashMap<RunKey, i32>,
    /// Exits handed to their runs and not yet recorded by the scheduler: a report of them
    /// again (the agent repeats it until acknowledged) is no news.
    unacked: std::collections::HashSet<RunKey>,
    /// Exits recorded (or no longer needed) to acknowledge in the next answer.
    acks: Vec<RunKey>,
    /// Exits acknowledged lately: one reported again (its answer was dropped) is acknowledged
    /// again without asking the store.
    acked_lately: VecDeque<RunKey>,
    /// Wakes every heartbeat of the node held waiting (an abandoned one as well as the live
    /// one: a single wake-up taken by a call whose agent has gone would be lost).
    notify: Arc<Notify>,
    /// Heartbeats received; a held call that a newer one superseded ends at once.
    beats: u64,
    power_watts: Option<f64>,
    /// The GPU power cap the node is asked to apply, and the one it reports applying.
    asked_cap: Option<f64>,
    applied_cap: Option<f64>,
    /// The same for the CPU package power limit (watts for all the node's packages).
    asked_cpu_cap: Option<f64>,
    applied_cpu_cap: Option<f64>,
    /// Log requests not yet answered, with when they last went out in a heartbeat's answer.
    log_requests: Vec<(api::LogRequest, Option<Instant>)>,
    /// The agent process serving the node by batched heartbeats, if it does.
    session: Option<Arc<BatchSession>>,
    /// The node's last report, to plan its answer when it changes between its heartbeats.
    last_beat: Option<api::Heartbeat>,
    /// Why its last report was refused, until one passes.
    problem: Option<String>,
    /// When the node's credential was issued (its join, or its last rotation, or this
    /// process's start).
    credential_issued: Option<Instant>,
    /// A rotated credential this process issued and the node has not used yet: sent again
    /// with every answer until it does.
    pending_credential: Option<String>,
}

impl Slot {
    /// Something for the node to do: its held heartbeats answer, and its agent process's held
    /// batched heartbeat learns which node.
    fn wake(&self, name: &str) {
        self.notify.notify_waiters();
        if let Some(session) = &self.session {
            session.dirty.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string());
            session.notify.notify_one();
        }
    }
}

#[derive(Default)]
struct Inner {
    slots: HashMap<String, Slot>,
    /// Credential hash to node name.
    credentials: HashMap<String, String>,
    /// Node name to its credential hash: a node that joins again drops its old credential
    /// without a walk over every node's.
    credential_of: HashMap<String, String>,
    /// Log requests waiting for their node's answer: id to (node, answer).
    log_waiters: HashMap<u64, (String, oneshot::Sender<api::LogChunk>)>,
    next_log_id: u64,
    /// Nodes that gained or lost their lease since the scheduler last asked.
    availability_changed: std::collections::HashSet<String>,
    /// Every lease deadline given out, soonest first: the sweep looks only at those due, and a
    /// node whose lease was renewed since is skipped, so it costs what expires, not the fleet.
    deadlines: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, String)>>,
    /// Nodes holding exits of each job not yet recorded, to acknowledge when it is.
    awaiting_ack: HashMap<i64, Vec<String>>,
    /// Agent processes heartbeating in batches, by the id they give.
    sessions: HashMap<String, Arc<BatchSession>>,
    /// Nodes whose reported GPU or CPU caps changed since the scheduler last asked.
    cap_reports_changed: std::collections::HashSet<String>,
    /// Lost nodes by when their grace ends and their runs end as lost.
    grace_deadlines: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, String)>>,
    /// Nodes the admin drained, with why: they take no new work.
    drained: HashMap<String, String>,
    /// Nodes the admin removed from service: no agent joins them until they are resumed.
    removed: std::collections::HashSet<String>,
    /// The gangs' rendezvous ports.
    rendezvous: Rendezvous,
    /// Node name to the credential it held before its last rotation, good until it uses the
    /// new one.
    previous_of: HashMap<String, String>,
}

/// What to do about the credential a node's call came with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CredentialStep {
    /// Nothing: it is current and young enough.
    Keep,
    /// The node still uses the credential a rotation replaced: the new one goes out again.
    Resend(String),
    /// Time for a new one (or the new one's text is gone with a restart): issue it.
    Rotate,
    /// The node uses its new credential: the one before stops working.
    Settle,
}

/// Where each gang's members meet (`DROME_MASTER_PORT` on the master node): a port of
/// `RENDEZVOUS_PORTS` given to one run of one job at a time on its master node's address, drawn from a
/// random place so it is not known before the run starts, and taken back when the run's last
/// member is done.
#[derive(Default)]
pub(crate) struct Rendezvous {
    /// (job, generation) to its master node, port and the members holding it.
    held: HashMap<(i64, i64), (String, u16, u32)>,
    /// Ports held on each master address.
    by_node: HashMap<String, std::collections::HashSet<u16>>,
}

/// The ports gangs meet on: 20,000 from 29,500 (PyTorch's default rendezvous port).
pub(crate) const RENDEZVOUS_PORTS: std::ops::Range<u16> = 29_500..49_500;

impl Rendezvous {
    /// The port of run `generation` of job `job`, whose master is `master`: the one its other
    /// members hold, or a free one.
    pub(crate) fn hold(&mut self, job: i64, generation: i64, master: &str) -> u16 {
        if let Some((_, port, holders)) = self.held.get_mut(&(job, generation)) {
            *holders += 1;
            return *port;
        }
        let taken = self.by_node.entry(master.to_string()).or_default();
        let span = RENDEZVOUS_PORTS.end - RENDEZVOUS_PORTS.start;
        let mut start = [0u8; 2];
        let _ = rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut start);
        let start = u16::from_le_bytes(start) % span;
        // All 20,000 held on one node at once: the run shares one, and its members may meet
        // another gang's listener, as they would on a port of their own choosing.
        let port = (0..span)
            .map(|i| RENDEZVOUS_PORTS.start + (start + i) % span)
            .find(|p| !taken.contains(p))
            .unwrap_or(RENDEZVOUS_PORTS.start + start);
        taken.insert(port);
        self.held.insert((job, generation), (master.to_string(), port, 1));
        port
    }

    /// A member of the run is done with its port.
    pub(crate) fn release(&mut self, job: i64, generation: i64) {
        let Some((_, _, holders)) = self.held.get_mut(&(job, generation)) else { return };
        *holders = holders.saturating_sub(1);
        if *holders == 0
            && let Some((node, port, _)) = self.held.remove(&(job, generation))
            && let Some(taken) = self.by_node.get_mut(&node)
        {
            taken.remove(&port);
            if taken.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }
}

/// Nodes served by agents.
#[derive(Clone)]
pub struct RemoteNodes {
    inner: Arc<Mutex<Inner>>,
    /// Joins since start, for the log's summary (a line per node would bury it at scale).
    joins: Arc<std::sync::atomic::AtomicU64>,
    pub config: LeaseConfig,
    /// Wakes the scheduler when a node is lost.
    pub(crate) wake: Arc<Notify>,
}

impl RemoteNodes {
    pub fn new(config: LeaseConfig) -> RemoteNodes {
        RemoteNodes { inner: Arc::default(), joins: Arc::default(), config, wake: Arc::new(Notify::new()) }
    }

    /// Counts a node's join.
    pub(crate) fn count_join(&self) {
        self.joins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Joins since start.
    pub fn joins(&self) -> u64 {
        self.joins.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A node known to have joined: its lease starts now (after a server restart, its agent gets
    /// one lease to come back).
    pub fn register(&self, name: &str, credential_hash: &str, address: &str, runtimes: &[String]) {
        let mut inner = self.lock();
        if let Some(old) = inner.credential_of.insert(name.to_string(), credential_hash.to_string()) {
            inner.credentials.remove(&old);
        }
        if let Some(previous) = inner.previous_of.remove(name) {
            inner.credentials.remove(&previous);
        }
        inner.credentials.insert(credential_hash.to_string(), name.to_string());
        let lease = Instant::now() + self.config.lease;
        let slot = inner.slots.entry(name.to_string()).or_default();
        slot.lease_until = Some(lease);
        slot.address = address.to_string();
        slot.runs_images = !runtimes.is_empty();
        slot.credential_issued = Some(Instant::now());
        slot.pending_credential = None;
        inner.availability_changed.insert(name.to_string());
        inner.deadlines.push(std::cmp::Reverse((lease, name.to_string())));
    }

    /// Drains a node (`Some(reason)`: it takes no new work) or resumes it (`None`: a removed
    /// node may join again).
    pub fn set_drained(&self, node: &str, reason: Option<String>) {
        let mut inner = self.lock();
        match reason {
            Some(r) => inner.drained.insert(node.to_string(), r),
            None => {
                inner.removed.remove(node);
                inner.drained.remove(node)
            }
        };
        inner.availability_changed.insert(node.to_string());
        drop(inner);
        self.wake.notify_one();
    }

    /// The drained nodes, with why.
    pub fn drained(&self) -> HashMap<String, String> {
        self.lock().drained.clone()
    }

    /// Marks a node removed from service (as read back from the store at start).
    pub fn set_removed(&self, node: &str) {
        self.lock().removed.insert(node.to_string());
    }

    pub fn is_removed(&self, node: &str) -> bool {
        self.lock().removed.contains(node)
    }

    /// Runs assigned to the node now (`None`: never heard of).
    pub fn runs_on(&self, node: &str) -> Option<usize> {
        self.lock().slots.get(node).map(|s| s.assigned.len())
    }

    /// Takes a node out of service: its credentials stop working and its lease ends now.
    /// Returns how many runs it still held (the caller checks there are none first).
    pub fn remove(&self, node: &str) -> usize {
        let mut inner = self.lock();
        let runs = inner.slots.get(node).map_or(0, |s| s.assigned.len());
        if let Some(hash) = inner.credential_of.remove(node) {
            inner.credentials.remove(&hash);
        }
        if let Some(previous) = inner.previous_of.remove(node) {
            inner.credentials.remove(&previous);
        }
        inner.removed.insert(node.to_string());
        if let Some(slot) = inner.slots.get_mut(node) {
            slot.lease_until = None;
            slot.power_watts = None;
            slot.notify.notify_waiters();
        }
        inner.availability_changed.insert(node.to_string());
        runs
    }

    /// A credential a rotation replaced that the node has not given up yet (read back at
    /// start): it still works until the node uses its new one.
    pub fn register_previous(&self, name: &str, previous_hash: &str) {
        let mut inner = self.lock();
        inner.credentials.insert(previous_hash.to_string(), name.to_string());
        inner.previous_of.insert(name.to_string(), previous_hash.to_string());
    }

    /// What to do about `used_hash`, the credential `node`'s call came with.
    pub(crate) fn credential_step(&self, node: &str, used_hash: &str) -> CredentialStep {
        let inner = self.lock();
        match inner.previous_of.get(node) {
            Some(previous) if previous == used_hash => {
                match inner.slots.get(node).and_then(|s| s.pending_credential.clone()) {
                    Some(c) => CredentialStep::Resend(c),
                    None => CredentialStep::Rotate,
                }
            }
            Some(_) => CredentialStep::Settle,
            None => {
                let issued = inner.slots.get(node).and_then(|s| s.credential_issued);
                if issued.is_some_and(|t| t.elapsed() >= self.config.credential_rotation) {
                    CredentialStep::Rotate
                } else {
                    CredentialStep::Keep
                }
            }
        }
    }

    /// `node` was given the credential `credential` (hashed `new_hash`) while it used the one
    /// hashed `used_hash`, which stays good until it uses the new one; any other goes.
    /// Returns false, changing nothing, when the node was removed or its credential changed
    /// meanwhile (a join, another rotation): the new credential is then not to be sent.
    pub(crate) fn rotated(&self, node: &str, used_hash: &str, new_hash: &str, credential: &str) -> bool {
        let mut inner = self.lock();
        let current = inner.credential_of.get(node).map(String::as_str);
        let previous = inner.previous_of.get(node).map(String::as_str);
        if inner.removed.contains(node) || (current != Some(used_hash) && previous != Some(used_hash)) {
            return false;
        }
        if let Some(old) = inner.credential_of.insert(node.to_string(), new_hash.to_string())
            && old != used_hash
        {
            inner.credentials.remove(&old);
        }
        inner.credentials.insert(new_hash.to_string(), node.to_string());
        inner.previous_of.insert(node.to_string(), used_hash.to_string());
        let slot = inner.slots.entry(node.to_string()).or_default();
        slot.pending_credential = Some(credential.to_string());
        slot.credential_issued = Some(Instant::now());
        true
    }

    /// `node` used its new credential: the one before stops working.
    pub(crate) fn settled(&self, node: &str) {
        let mut inner = self.lock();
        if let Some(previous) = inner.previous_of.remove(node) {
            inner.credentials.remove(&previous);
        }
        if let Some(slot) = inner.slots.get_mut(node) {
            slot.pending_credential = None;
        }
    }

    pub fn node_of(&self, credential_hash: &str) -> Option<String> {
        self.lock().credentials.get(credential_hash).cloned()
    }

    /// A heartbeat arrives: its number, and what wakes the node's held heartbeats when its work
    /// changes.
    pub(crate) fn begin_beat(&self, node: &str) -> (u64, Arc<Notify>) {
        let mut inner = self.lock();
        let slot = inner.slots.entry(node.to_string()).or_default();
        slot.beats += 1;
        (slot.beats, slot.notify.clone())
    }

    /// Whether a newer heartbeat of the node came after heartbeat `beat` (whose agent, then,
    /// no longer waits for its answer).
    pub(crate) fn superseded(&self, node: &str, beat: u64) -> bool {
        self.lock().slots.get(node).is_some_and(|s| s.beats != beat)
    }

    pub(crate) fn address(&self, node: &str) -> String {
        self.lock().slots.get(node).map(|s| s.address.clone()).filter(|a| !a.is_empty()).unwrap_or("127.0.0.1".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gang_shares_one_rendezvous_port_and_no_two_gangs_of_a_node_do() {
        let mut r = Rendezvous::default();
        let a = r.hold(1, 1, "n1");
        assert!(RENDEZVOUS_PORTS.contains(&a));
        assert_eq!(r.hold(1, 1, "n1"), a, "the second member meets at the first's port");
        let b = r.hold(2, 1, "n1");
        let next_run = r.hold(1, 2, "n1");
        assert!(b != a && next_run != a && next_run != b, "{a} {b} {next_run}");
        // Freed once both members of job 1's first run are done.
        r.release(1, 1);
        assert!(r.by_node["n1"].contains(&a));
        r.release(1, 1);
        assert!(!r.by_node["n1"].contains(&a));
        r.release(2, 1);
        r.release(1, 2);
        assert!(r.held.is_empty() && r.by_node.is_empty());
        // Ten gangs meeting on one node: ten ports.
        let ports: std::collections::HashSet<u16> = (10..20).map(|j| r.hold(j, 1, "n2")).collect();
        assert_eq!(ports.len(), 10);
    }

    #[test]
    fn a_node_with_every_port_held_still_answers() {
        let mut r = Rendezvous::default();
        let span = i64::from(RENDEZVOUS_PORTS.end - RENDEZVOUS_PORTS.start);
        for j in 0..span {
            r.hold(j, 1, "n");
        }
        assert_eq!(r.by_node["n"].len() as i64, span);
        assert!(RENDEZVOUS_PORTS.contains(&r.hold(span, 1, "n")));
    }
}
