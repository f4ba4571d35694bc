//! Remote nodes: the [`NodeExecutor`] whose work runs on node agents. A run is an assignment
//! that the node's agent picks up on its next heartbeat; it ends when the agent reports the exit,
//! or when the node's lease expires (the node is lost). Dropping a run's future (cancellation,
//! preemption) takes the assignment back: the agent, still reporting the run, is told to kill it.
//! Every assignment carries the job's generation (its start count); a run of any other
//! generation is stale and killed, so no job runs twice at once. A run asked to stop
//! ([`NodeExecutor::stop`]) stays assigned, marked stopping: the node is told to kill it, and its
//! future ends only when the node's report no longer lists it (or the node is lost), so its GPUs
//! go to other work only once its processes are gone.

use crate::node::{NodeExecutor, RunFuture, RunOutcome, RunSpec};
use api::RunKey;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};

/// Lease timing.
#[derive(Clone, Copy, Debug)]
pub struct LeaseConfig {
    pub heartbeat: Duration,
    pub lease: Duration,
    /// How long after a node's lease ran out its runs end as lost (and their GPUs go to other
    /// work). An agent that cannot renew its lease for a lease period kills its runs itself, so
    /// by then no copy of them runs on the lost node: no job ever has two live copies.
    pub grace: Duration,
}

impl LeaseConfig {
    /// Leases of `lease`, renewed every `heartbeat`, with the default grace.
    pub fn new(heartbeat: Duration, lease: Duration) -> LeaseConfig {
        LeaseConfig { heartbeat, lease, grace: Duration::from_secs(2) }
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig::new(Duration::from_secs(5), Duration::from_secs(20))
    }
}

struct Assigned {
    assignment: api::Assignment,
    done: Option<oneshot::Sender<RunOutcome>>,
    /// Asked to stop: killed if the node runs it, never handed out again, ended once the node
    /// reports it gone.
    stopping: bool,
}

#[derive(Default)]
struct Slot {
    /// `None`: never heard from (or lost).
    lease_until: Option<Instant>,
    address: String,
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

/// An agent process that heartbeats for many nodes at once: what wakes its held call, and which
/// of its nodes have something to do since it last looked.
#[derive(Default)]
pub(crate) struct BatchSession {
    pub notify: Notify,
    dirty: Mutex<std::collections::HashSet<String>>,
    /// Calls received; a held one that a newer one superseded ends.
    pub calls: std::sync::atomic::AtomicU64,
    /// Answers given and not yet known received, by number, with the nodes they were for: the
    /// process may have dropped such a call (to report an end at once), so later calls plan
    /// those nodes again, from their latest report, until it says it got them.
    answered: Mutex<BTreeMap<u64, Vec<String>>>,
    next_answer: std::sync::atomic::AtomicU64,
}

impl BatchSession {
    /// A call begins, the process having received every answer up to `last_answer`: the nodes
    /// of later answers are planned again.
    pub fn begin_call(&self, last_answer: u64) {
        let mut answered = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        let later = answered.split_off(&(last_answer + 1));
        // The process names every answer it gets with its next call: an earlier one still here
        // never reached it. Its nodes are planned again once more, then forgotten; later ones
        // (perhaps still on their way) are planned again until named.
        let mut again: Vec<String> = answered
            .iter()
            .filter(|(number, _)| **number != last_answer)
            .flat_map(|(_, nodes)| nodes.clone())
            .collect();
        again.extend(later.values().flatten().cloned());
        *answered = later;
        drop(answered);
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).extend(again);
    }

    /// An answer goes out for `nodes`: its number.
    pub fn answering(&self, nodes: Vec<String>) -> u64 {
        let number = self.next_answer.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if !nodes.is_empty() {
            self.answered.lock().unwrap_or_else(|e| e.into_inner()).insert(number, nodes);
        }
        number
    }

    /// The nodes that changed since the last call, forgotten here.
    pub fn take_dirty(&self) -> Vec<String> {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).drain().collect()
    }
}

#[derive(Default)]
struct Inner {
    slots: HashMap<String, Slot>,
    /// Credential hash to node name.
    credentials: HashMap<String, String>,
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
    /// Lost nodes by when their grace ends and their runs end as lost.
    grace_deadlines: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, String)>>,
}

/// A log request sent again if its answer has not come this long after it went out (the
/// heartbeat answer that carried it may have been dropped).
const LOG_RESEND: Duration = Duration::from_secs(2);

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

/// What a heartbeat's answer is made of, before the store is asked about unknown runs.
pub(crate) struct BeatPlan {
    pub assign: Vec<api::Assignment>,
    /// Runs the agent reports that this server did not assign: the store decides.
    pub unknown: Vec<RunKey>,
    pub kill: Vec<RunKey>,
    /// Exits reported of runs this server did not assign: the store decides whether they are
    /// still needed (their run may be resumed) or can be acknowledged.
    pub unknown_exits: Vec<RunKey>,
    /// Exits recorded, to acknowledge ([`RemoteNodes::acks_sent`] once the answer goes).
    pub acked: Vec<RunKey>,
    /// Whether this heartbeat handed exits to their runs: its answer waits a little for them
    /// to be recorded, so it can acknowledge them.
    pub delivered_exits: bool,
    pub logs: Vec<api::LogRequest>,
    /// The GPU and CPU power caps to ask for, and whether the node applies others.
    pub cap: Option<f64>,
    pub cpu_cap: Option<f64>,
    pub cap_stale: bool,
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
    pub fn register(&self, name: &str, credential_hash: &str, address: &str) {
        let mut inner = self.lock();
        inner.credentials.retain(|_, n| n != name);
        inner.credentials.insert(credential_hash.to_string(), name.to_string());
        let lease = Instant::now() + self.config.lease;
        let slot = inner.slots.entry(name.to_string()).or_default();
        slot.lease_until = Some(lease);
        slot.address = address.to_string();
        inner.availability_changed.insert(name.to_string());
        inner.deadlines.push(std::cmp::Reverse((lease, name.to_string())));
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

    /// The session of agent process `agent_id`, made on its first call.
    pub(crate) fn session(&self, agent_id: &str) -> Arc<BatchSession> {
        let mut inner = self.lock();
        if inner.sessions.len() > 100_000 {
            // Ids of processes long gone: their nodes attach again on their next call.
            inner.sessions.clear();
        }
        inner.sessions.entry(agent_id.to_string()).or_default().clone()
    }

    /// `node` is served by `session` from now on.
    pub(crate) fn attach(&self, node: &str, session: &Arc<BatchSession>) {
        let mut inner = self.lock();
        let slot = inner.slots.entry(node.to_string()).or_default();
        if !slot.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            slot.session = Some(session.clone());
        }
    }

    /// The node's last report, if it made one.
    pub(crate) fn last_beat(&self, node: &str) -> Option<api::Heartbeat> {
        self.lock().slots.get(node).and_then(|s| s.last_beat.clone())
    }

    /// Whether a newer heartbeat of the node came after heartbeat `beat` (whose agent, then,
    /// no longer waits for its answer).
    pub(crate) fn superseded(&self, node: &str, beat: u64) -> bool {
        self.lock().slots.get(node).is_some_and(|s| s.beats != beat)
    }

    /// Takes a heartbeat: renews the lease, records exits, and plans the answer.
    pub(crate) fn beat(&self, node: &str, hb: &api::Heartbeat, renew: bool) -> BeatPlan {
        let mut inner = self.lock();
        if renew && inner.slots.get(node).is_none_or(|s| s.lease_until.is_none()) {
            inner.availability_changed.insert(node.to_string());
        }
        // The heap's deadline is the lease's own, so the sweep finds it when it runs out.
        let until = Instant::now() + self.config.lease;
        if renew {
            inner.deadlines.push(std::cmp::Reverse((until, node.to_string())));
        }
        let slot = inner.slots.entry(node.to_string()).or_default();
        if renew {
            slot.lease_until = Some(until);
            slot.last_beat = Some(hb.clone());
            slot.power_watts = hb.power_watts;
            if slot.applied_cap != hb.gpu_power_cap_watts || slot.applied_cpu_cap != hb.cpu_power_cap_watts {
                // Starts may be waiting for these caps (dynamic power mode): schedule again.
                slot.applied_cap = hb.gpu_power_cap_watts;
                slot.applied_cpu_cap = hb.cpu_power_cap_watts;
                self.wake.notify_one();
            }
        }
        let mut unknown_exits = Vec::new();
        let mut delivered = Vec::new();
        if renew {
            for e in &hb.exited {
                if slot.unacked.contains(&e.run) || slot.acks.contains(&e.run) {
                    continue;
                }
                if slot.acked_lately.contains(&e.run) {
                    slot.acks.push(e.run);
                    continue;
                }
                match slot.assigned.get_mut(&(e.run.job_id, e.run.member)) {
                    Some(a) if a.assignment.run.generation == e.run.generation => {
                        if let Some(tx) = a.done.take() {
                            let _ = tx.send(RunOutcome::Exited { code: e.code });
                        }
                        slot.assigned.remove(&(e.run.job_id, e.run.member));
                        slot.unacked.insert(e.run);
                        delivered.push(e.run.job_id);
                    }
                    _ => {
                        slot.early_exits.insert(e.run, e.code);
                        if slot.early_exits.len() > 10_000 {
                            slot.early_exits.clear();
                        }
                        unknown_exits.push(e.run);
                    }
                }
            }
        }
        let acked = slot.acks.clone();
        let delivered_exits = !delivered.is_empty();
        for job in delivered {
            let nodes = inner.awaiting_ack.entry(job).or_default();
            if !nodes.iter().any(|n| n == node) {
                nodes.push(node.to_string());
            }
        }
        let Some(slot) = inner.slots.get_mut(node) else {
            return BeatPlan {
                assign: Vec::new(),
                unknown: Vec::new(),
                kill: Vec::new(),
                unknown_exits,
                acked,
                delivered_exits,
                logs: Vec::new(),
                cap: None,
                cpu_cap: None,
                cap_stale: false,
            };
        };
        let mut assign = Vec::new();
        let mut unknown = Vec::new();
        let mut kill = Vec::new();
        let mut gone = Vec::new();
        for a in slot.assigned.values() {
            let run = a.assignment.run;
            if !hb.running.contains(&run) && !hb.exited.iter().any(|e| e.run == run) {
                if !a.stopping {
                    assign.push(a.assignment.clone());
                } else if renew {
                    // A fresh report, made after every answer the node received, without it:
                    // no process of it is left.
                    gone.push((run.job_id, run.member));
                }
            }
        }
        for key in gone {
            if let Some(mut a) = slot.assigned.remove(&key)
                && let Some(tx) = a.done.take()
            {
                let _ = tx.send(RunOutcome::Lost { message: "stopped".into() });
            }
        }
        for r in &hb.running {
            match slot.assigned.get(&(r.job_id, r.member)) {
                Some(a) if a.assignment.run.generation == r.generation && !a.stopping => {}
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
        BeatPlan {
            assign,
            unknown,
            kill,
            unknown_exits,
            acked,
            delivered_exits,
            logs,
            cap: slot.asked_cap,
            cpu_cap: slot.asked_cpu_cap,
            cap_stale,
        }
    }

    /// The scheduler recorded the end of `job_id`'s run `generation` (or no longer needs it):
    /// its nodes' reports of it are acknowledged with their next answer.
    pub fn acknowledge(&self, job_id: i64, generation: i64) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(nodes) = inner.awaiting_ack.remove(&job_id) else { return };
        for name in nodes {
            let Some(slot) = inner.slots.get_mut(&name) else { continue };
            let done: Vec<RunKey> =
                slot.unacked.iter().filter(|r| r.job_id == job_id && r.generation == generation).copied().collect();
            for r in done {
                slot.unacked.remove(&r);
                slot.acks.push(r);
            }
            slot.wake(&name);
        }
    }

    /// Acknowledges at once exits the store says need no recording (their job ended, or runs
    /// another generation).
    pub(crate) fn acknowledge_unneeded(&self, node: &str, runs: &[RunKey]) {
        let mut inner = self.lock();
        if let Some(slot) = inner.slots.get_mut(node) {
            for r in runs {
                slot.early_exits.remove(r);
                if !slot.acks.contains(r) {
                    slot.acks.push(*r);
                }
            }
        }
    }

    /// The acknowledgements in `sent` went out in an answer.
    pub(crate) fn acks_sent(&self, node: &str, sent: &[RunKey]) {
        if sent.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if let Some(slot) = inner.slots.get_mut(node) {
            slot.acks.retain(|r| !sent.contains(r));
            for r in sent {
                if !slot.acked_lately.contains(r) {
                    slot.acked_lately.push_back(*r);
                }
            }
            while slot.acked_lately.len() > 64 {
                slot.acked_lately.pop_front();
            }
        }
    }

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
            slot.wake(node);
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
            slot.wake(&self.node);
        }
    }
}

impl RemoteNodes {
    /// What the node is handed for `spec`'s work.
    fn assignment(&self, spec: &RunSpec) -> api::Assignment {
        let run = RunKey { job_id: spec.job_id, member: spec.member, generation: spec.generation };
        let master = spec.master_node.as_deref().map(|n| self.address(n)).unwrap_or_else(|| "127.0.0.1".into());
        let mut env: BTreeMap<String, String> = spec.env.clone();
        env.insert("DROME_JOB_ID".into(), spec.job_id.to_string());
        env.insert("DROME_RANK".into(), spec.member.to_string());
        env.insert("DROME_WORLD_SIZE".into(), spec.members.to_string());
        env.insert("DROME_MASTER_ADDR".into(), master);
        env.insert("DROME_MASTER_PORT".into(), (29500 + (spec.job_id % 20000)).to_string());
        env.insert("DROME_GENERATION".into(), spec.generation.to_string());
        api::Assignment {
            run,
            members: spec.members,
            command: spec.command.clone().unwrap_or_else(|| "sleep".into()),
            args: if spec.command.is_some() { spec.args.clone() } else { vec!["infinity".into()] },
            env,
            gpus: spec.gpus.clone(),
        }
    }
}

impl NodeExecutor for RemoteNodes {
    fn run(&self, spec: RunSpec) -> RunFuture {
        let assignment = self.assignment(&spec);
        let run = assignment.run;
        let (tx, rx) = oneshot::channel();
        let early = {
            let mut inner = self.lock();
            let slot = inner.slots.entry(spec.node.clone()).or_default();
            if slot.lease_until.is_none() {
                Some(RunOutcome::Lost { message: format!("node {} has no agent", spec.node) })
            } else if let Some(code) = slot.early_exits.remove(&run) {
                slot.unacked.insert(run);
                let nodes = inner.awaiting_ack.entry(run.job_id).or_default();
                if !nodes.contains(&spec.node) {
                    nodes.push(spec.node.clone());
                }
                Some(RunOutcome::Exited { code })
            } else {
                let assigned = Assigned { assignment, done: Some(tx), stopping: false };
                slot.assigned.insert((run.job_id, run.member), assigned);
                slot.wake(&spec.node);
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

    fn stop(&self, node: &str, job_id: i64, member: u32, generation: i64) -> bool {
        let mut inner = self.lock();
        if let Some(slot) = inner.slots.get_mut(node)
            && let Some(a) = slot.assigned.get_mut(&(job_id, member))
            && a.assignment.run.generation == generation
            && !a.stopping
        {
            a.stopping = true;
            slot.wake(node);
        }
        true
    }

    fn stop_run(&self, spec: RunSpec) -> RunFuture {
        let assignment = self.assignment(&spec);
        let run = assignment.run;
        let (tx, rx) = oneshot::channel();
        let early = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let slot = inner.slots.entry(spec.node.clone()).or_default();
            if let Some(code) = slot.early_exits.remove(&run) {
                // The node reported the run's end already: nothing left to stop.
                slot.unacked.insert(run);
                let nodes = inner.awaiting_ack.entry(run.job_id).or_default();
                if !nodes.contains(&spec.node) {
                    nodes.push(spec.node.clone());
                }
                Some(RunOutcome::Exited { code })
            } else {
                if slot.lease_until.is_none() {
                    // A lost node: whatever it ran has stopped a grace from now at the latest.
                    let due = Instant::now() + self.config.grace;
                    inner.grace_deadlines.push(std::cmp::Reverse((due, spec.node.clone())));
                }
                let slot = inner.slots.entry(spec.node.clone()).or_default();
                slot.assigned.insert((run.job_id, run.member), Assigned { assignment, done: Some(tx), stopping: true });
                slot.wake(&spec.node);
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

    fn availability_changes(&self) -> Vec<String> {
        self.lock().availability_changed.drain().collect()
    }

    fn acknowledge(&self, job_id: i64, generation: i64) {
        RemoteNodes::acknowledge(self, job_id, generation)
    }
}
