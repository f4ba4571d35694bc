//! Remote nodes: the [`NodeExecutor`] whose work runs on node agents. A run is an assignment
//! that the node's agent picks up on its next heartbeat; it ends when the agent reports the exit,
//! or when the node's lease expires (the node is lost). Dropping a run's future (cancellation,
//! preemption) takes the assignment back: the agent, still reporting the run, is told to kill it.
//! Every assignment carries the job's generation (its start count); a run of any other
//! generation is stale and killed, so no job runs twice at once.

use crate::node::{NodeExecutor, RunFuture, RunOutcome, RunSpec};
use api::RunKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};

/// Lease timing.
#[derive(Clone, Copy, Debug)]
pub struct LeaseConfig {
    pub heartbeat: Duration,
    pub lease: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig { heartbeat: Duration::from_secs(5), lease: Duration::from_secs(20) }
    }
}

struct Assigned {
    assignment: api::Assignment,
    done: Option<oneshot::Sender<RunOutcome>>,
}

#[derive(Default)]
struct Slot {
    /// `None`: never heard from (or lost).
    lease_until: Option<Instant>,
    address: String,
    assigned: HashMap<(i64, u32), Assigned>,
    /// Exits reported before their run was registered here (after a server restart).
    early_exits: HashMap<RunKey, i32>,
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
}

#[derive(Default)]
struct Inner {
    slots: HashMap<String, Slot>,
    /// Credential hash to node name.
    credentials: HashMap<String, String>,
    /// Log requests waiting for their node's answer: id to (node, answer).
    log_waiters: HashMap<u64, (String, oneshot::Sender<api::LogChunk>)>,
    next_log_id: u64,
}

/// A log request sent again if its answer has not come this long after it went out (the
/// heartbeat answer that carried it may have been dropped).
const LOG_RESEND: Duration = Duration::from_secs(2);

/// Nodes served by agents.
#[derive(Clone)]
pub struct RemoteNodes {
    inner: Arc<Mutex<Inner>>,
    pub config: LeaseConfig,
    /// Wakes the scheduler when a node is lost.
    pub(crate) wake: Arc<Notify>,
}

/// What a heartbeat's answer is made of, before the store is asked about unknown runs.
pub(crate) struct BeatPlan {
    pub assign: Vec<api::Assignment>,
    /// Runs the agent reports that this server did not assign: the store decides.
    pub unknown: Vec<RunKey>,
    pub kill: Vec<RunKey>,
    pub logs: Vec<api::LogRequest>,
    /// The GPU and CPU power caps to ask for, and whether the node applies others.
    pub cap: Option<f64>,
    pub cpu_cap: Option<f64>,
    pub cap_stale: bool,
}

impl RemoteNodes {
    pub fn new(config: LeaseConfig) -> RemoteNodes {
        RemoteNodes { inner: Arc::default(), config, wake: Arc::new(Notify::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A node known to have joined: its lease starts now (after a server restart, its agent gets
    /// one lease to come back).
    pub fn register(&self, name: &str, credential_hash: &str, address: &str) {
        let mut inner = self.lock();
        inner.credentials.retain(|_, n| n != name);
        inner.credentials.insert(credential_hash.to_string(), name.to_string());
        let lease = Instant::now() + self.config.lease;
        let slot = inner.slots.entry(name.to_string()).or_default();
        slot.lease_until = Some(lease);
        slot.address = address.to_string();
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

    /// Takes a heartbeat: renews the lease, records exits, and plans the answer.
    pub(crate) fn beat(&self, node: &str, hb: &api::Heartbeat, renew: bool) -> BeatPlan {
        let mut inner = self.lock();
        let slot = inner.slots.entry(node.to_string()).or_default();
        if renew {
            slot.lease_until = Some(Instant::now() + self.config.lease);
            slot.power_watts = hb.power_watts;
            if slot.applied_cap != hb.gpu_power_cap_watts || slot.applied_cpu_cap != hb.cpu_power_cap_watts {
                // Starts may be waiting for these caps (dynamic power mode): schedule again.
                slot.applied_cap = hb.gpu_power_cap_watts;
                slot.applied_cpu_cap = hb.cpu_power_cap_watts;
                self.wake.notify_one();
            }
            for e in &hb.exited {
                match slot.assigned.get_mut(&(e.run.job_id, e.run.member)) {
                    Some(a) if a.assignment.run.generation == e.run.generation => {
                        if let Some(tx) = a.done.take() {
                            let _ = tx.send(RunOutcome::Exited { code: e.code });
                        }
                        slot.assigned.remove(&(e.run.job_id, e.run.member));
                    }
                    _ => {
                        slot.early_exits.insert(e.run, e.code);
                        if slot.early_exits.len() > 10_000 {
                            slot.early_exits.clear();
                        }
                    }
                }
            }
        }
        let mut assign = Vec::new();
        let mut unknown = Vec::new();
        let mut kill = Vec::new();
        for a in slot.assigned.values() {
            if !hb.running.contains(&a.assignment.run) && !hb.exited.iter().any(|e| e.run == a.assignment.run) {
                assign.push(a.assignment.clone());
            }
        }
        for r in &hb.running {
            match slot.assigned.get(&(r.job_id, r.member)) {
                Some(a) if a.assignment.run.generation == r.generation => {}
                Some(_) => kill.push(*r),
                None => unknown.push(*r),
            }
        }
        assign.sort_by_key(|a| a.run);
        let now = Instant::now();
        let mut logs = Vec::new();
        for (req, sent) in slot.log_requests.iter_mut() {
            if sent.is_none_or(|t| now.duration_since(t) >= LOG_RESEND) {
                *sent = Some(now);
                logs.push(req.clone());
            }
        }
        let cap_stale = slot.asked_cap != hb.gpu_power_cap_watts || slot.asked_cpu_cap != hb.cpu_power_cap_watts;
        BeatPlan { assign, unknown, kill, logs, cap: slot.asked_cap, cpu_cap: slot.asked_cpu_cap, cap_stale }
    }

    /// Nodes whose lease has run out; their runs end as lost. Returns the nodes just lost.
    pub fn expire(&self) -> Vec<String> {
        let now = Instant::now();
        let mut lost = Vec::new();
        let mut inner = self.lock();
        for (name, slot) in inner.slots.iter_mut() {
            if slot.lease_until.is_some_and(|t| t <= now) {
                slot.lease_until = None;
                for (_, mut a) in slot.assigned.drain() {
                    if let Some(tx) = a.done.take() {
                        let _ = tx.send(RunOutcome::Lost { message: format!("node {name} lost: its lease expired") });
                    }
                }
                lost.push(name.clone());
            }
        }
        if !lost.is_empty() {
            tracing::warn!(nodes = ?lost, "nodes lost: leases expired");
            self.wake.notify_one();
        }
        lost
    }

    /// Names of nodes holding a lease.
    pub fn live_nodes(&self) -> Vec<String> {
        let inner = self.lock();
        inner.slots.iter().filter(|(_, s)| s.lease_until.is_some()).map(|(n, _)| n.clone()).collect()
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
            slot.notify.notify_waiters();
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
                slot.notify.notify_waiters();
            }
        }
    }

    /// Whether `node` has a live agent.
    pub fn is_live(&self, node: &str) -> bool {
        self.lock().slots.get(node).is_some_and(|s| s.lease_until.is_some())
    }

    /// Asks a node's agent for a piece of a run's output, through the node's next heartbeat
    /// answer, and waits up to `within` for it.
    pub(crate) async fn fetch_log(
        &self,
        node: &str,
        run: RunKey,
        stream: api::LogStream,
        offset: u64,
        limit: u64,
        within: Duration,
    ) -> Result<api::LogChunk, String> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut inner = self.lock();
            inner.next_log_id += 1;
            let id = inner.next_log_id;
            let Some(slot) = inner.slots.get_mut(node).filter(|s| s.lease_until.is_some()) else {
                return Err(format!("node {node} has no live agent"));
            };
            slot.log_requests.push((api::LogRequest { id, run, stream, offset, limit }, None));
            slot.notify.notify_waiters();
            inner.log_waiters.insert(id, (node.to_string(), tx));
            id
        };
        let answer = tokio::time::timeout(within, rx).await;
        let mut inner = self.lock();
        inner.log_waiters.remove(&id);
        if let Some(slot) = inner.slots.get_mut(node) {
            slot.log_requests.retain(|(r, _)| r.id != id);
        }
        match answer {
            Ok(Ok(chunk)) => Ok(chunk),
            _ => Err(format!("node {node} did not send the output within {} s", within.as_secs())),
        }
    }

    /// Takes a node's answer to one of its log requests; answers for another node's request,
    /// or for one no longer awaited, are dropped.
    pub(crate) fn log_answer(&self, node: &str, chunk: api::LogChunk) {
        let mut inner = self.lock();
        if inner.log_waiters.get(&chunk.id).is_some_and(|(n, _)| n == node)
            && let Some((_, tx)) = inner.log_waiters.remove(&chunk.id)
        {
            if let Some(slot) = inner.slots.get_mut(node) {
                slot.log_requests.retain(|(r, _)| r.id != chunk.id);
            }
            let _ = tx.send(chunk);
        }
    }

    pub(crate) fn address(&self, node: &str) -> String {
        self.lock().slots.get(node).map(|s| s.address.clone()).filter(|a| !a.is_empty()).unwrap_or("127.0.0.1".into())
    }
}

struct Guard {
    nodes: RemoteNodes,
    node: String,
    run: RunKey,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut inner = self.nodes.lock();
        if let Some(slot) = inner.slots.get_mut(&self.node)
            && slot.assigned.get(&(self.run.job_id, self.run.member)).is_some_and(|a| a.assignment.run == self.run)
        {
            slot.assigned.remove(&(self.run.job_id, self.run.member));
            slot.notify.notify_waiters();
        }
    }
}

impl NodeExecutor for RemoteNodes {
    fn run(&self, spec: RunSpec) -> RunFuture {
        let run = RunKey { job_id: spec.job_id, member: spec.member, generation: spec.generation };
        let (tx, rx) = oneshot::channel();
        let master = spec.master_node.as_deref().map(|n| self.address(n)).unwrap_or_else(|| "127.0.0.1".into());
        let mut env: BTreeMap<String, String> = spec.env.clone();
        env.insert("DROME_JOB_ID".into(), spec.job_id.to_string());
        env.insert("DROME_RANK".into(), spec.member.to_string());
        env.insert("DROME_WORLD_SIZE".into(), spec.members.to_string());
        env.insert("DROME_MASTER_ADDR".into(), master);
        env.insert("DROME_MASTER_PORT".into(), (29500 + (spec.job_id % 20000)).to_string());
        env.insert("DROME_GENERATION".into(), spec.generation.to_string());
        let assignment = api::Assignment {
            run,
            members: spec.members,
            command: spec.command.clone().unwrap_or_else(|| "sleep".into()),
            args: if spec.command.is_some() { spec.args.clone() } else { vec!["infinity".into()] },
            env,
            gpus: spec.gpus.clone(),
        };
        let early = {
            let mut inner = self.lock();
            let slot = inner.slots.entry(spec.node.clone()).or_default();
            if slot.lease_until.is_none() {
                Some(RunOutcome::Lost { message: format!("node {} has no agent", spec.node) })
            } else if let Some(code) = slot.early_exits.remove(&run) {
                Some(RunOutcome::Exited { code })
            } else {
                slot.assigned.insert((run.job_id, run.member), Assigned { assignment, done: Some(tx) });
                slot.notify.notify_waiters();
                None
            }
        };
        let guard = Guard { nodes: self.clone(), node: spec.node.clone(), run };
        Box::pin(async move {
            let _guard = guard;
            if let Some(outcome) = early {
                return outcome;
            }
            rx.await.unwrap_or(RunOutcome::Lost { message: "the run was dropped".into() })
        })
    }

    fn unavailable(&self, all: &[String]) -> Vec<String> {
        let inner = self.lock();
        all.iter().filter(|n| inner.slots.get(*n).is_none_or(|s| s.lease_until.is_none())).cloned().collect()
    }
}
