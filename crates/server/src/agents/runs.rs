//! Runs: what each node is assigned, how a heartbeat's report is planned into its answer (start,
//! kill, acknowledge), and the executor the scheduler launches and stops work through.

use super::logs::LOG_RESEND;
use super::*;

pub(super) struct Assigned {
    pub(super) assignment: api::Assignment,
    pub(super) done: Option<oneshot::Sender<RunOutcome>>,
    /// Asked to stop: killed if the node runs it, never handed out again, ended once the node
    /// reports it gone.
    pub(super) stopping: bool,
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
    /// The runs the node holds as assigned, when its report has a draw to meter.
    pub metered: Vec<crate::meter::MeteredRun>,
}

struct Guard {
    nodes: RemoteNodes,
    node: String,
    run: RunKey,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut inner = self.nodes.lock();
        inner.rendezvous.release(self.run.job_id, self.run.generation);
        if let Some(slot) = inner.slots.get_mut(&self.node)
            && slot.assigned.get(&(self.run.job_id, self.run.member)).is_some_and(|a| a.assignment.run == self.run)
        {
            slot.assigned.remove(&(self.run.job_id, self.run.member));
            slot.wake(&self.node);
        }
    }
}

impl RemoteNodes {
    /// Registers `spec`'s run on its node: to be handed out, or (`stopping`) to be killed if the
    /// node has it. Its future ends with the run's end, which a node may have reported already
    /// (after a server restart); a run to start on a node without an agent is lost at once,
    /// while one to stop there is gone a grace from now at the latest.
    fn assign(&self, spec: RunSpec, stopping: bool) -> RunFuture {
        let port = {
            // By the master's address: virtual nodes of one machine share its ports.
            let master = spec.master_node.clone().unwrap_or_else(|| spec.node.clone());
            let host = self.address(&master);
            self.lock().rendezvous.hold(spec.job_id, spec.generation, &host)
        };
        let assignment = self.assignment(&spec, port);
        let run = assignment.run;
        let (tx, rx) = oneshot::channel();
        let early = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let slot = inner.slots.entry(spec.node.clone()).or_default();
            let lost = slot.lease_until.is_none();
            let early = if lost && !stopping {
                Some(RunOutcome::Lost { message: format!("node {} has no agent", spec.node) })
            } else if let Some(code) = slot.early_exits.remove(&run) {
                slot.unacked.insert(run);
                let nodes = inner.awaiting_ack.entry(run.job_id).or_default();
                if !nodes.contains(&spec.node) {
                    nodes.push(spec.node.clone());
                }
                Some(RunOutcome::Exited { code })
            } else {
                slot.assigned.insert((run.job_id, run.member), Assigned { assignment, done: Some(tx), stopping });
                slot.wake(&spec.node);
                None
            };
            if lost && early.is_none() {
                inner.grace_deadlines.push(std::cmp::Reverse((Instant::now() + self.config.grace, spec.node.clone())));
            }
            early
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

    /// What the node is handed for `spec`'s work.
    fn assignment(&self, spec: &RunSpec, port: u16) -> api::Assignment {
        let run = RunKey { job_id: spec.job_id, member: spec.member, generation: spec.generation };
        let master = spec.master_node.as_deref().map(|n| self.address(n)).unwrap_or_else(|| "127.0.0.1".into());
        let mut env: BTreeMap<String, String> = spec.env.clone();
        env.insert("DROME_JOB_ID".into(), spec.job_id.to_string());
        env.insert("DROME_RANK".into(), spec.member.to_string());
        env.insert("DROME_WORLD_SIZE".into(), spec.members.to_string());
        env.insert("DROME_MASTER_ADDR".into(), master);
        env.insert("DROME_MASTER_PORT".into(), port.to_string());
        env.insert("DROME_GENERATION".into(), spec.generation.to_string());
        api::Assignment {
            run,
            members: spec.members,
            command: spec.command.clone().unwrap_or_else(|| "sleep".into()),
            args: if spec.command.is_some() { spec.args.clone() } else { vec!["infinity".into()] },
            env,
            gpus: spec.gpus.clone(),
            gpu_milli: spec.gpu_milli,
            cpu_milli: spec.cpu_milli,
            memory_mib: spec.memory_mib,
            image: spec.image.clone(),
        }
    }
}

impl NodeExecutor for RemoteNodes {
    fn run(&self, spec: RunSpec) -> RunFuture {
        self.assign(spec, false)
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
        self.assign(spec, true)
    }

    fn unavailable(&self, all: &[String]) -> Vec<String> {
        let inner = self.lock();
        // A drained node is as good as absent to new work; its runs go on.
        all.iter()
            .filter(|n| inner.drained.contains_key(*n) || inner.slots.get(*n).is_none_or(|s| s.lease_until.is_none()))
            .cloned()
            .collect()
    }

    fn runs_images(&self, all: &[String]) -> Vec<String> {
        let inner = self.lock();
        all.iter().filter(|n| inner.slots.get(*n).is_some_and(|s| s.runs_images)).cloned().collect()
    }

    fn availability_changes(&self) -> Vec<String> {
        self.lock().availability_changed.drain().collect()
    }

    fn acknowledge(&self, job_id: i64, generation: i64) {
        RemoteNodes::acknowledge(self, job_id, generation)
    }
}

impl RemoteNodes {
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
        // A node back (or new) is looked at again too: what it applies may not be what it was asked.
        if renew
            && inner.slots.get(node).is_none_or(|s| {
                s.lease_until.is_none()
                    || s.applied_cap != hb.gpu_power_cap_watts
                    || s.applied_cpu_cap != hb.cpu_power_cap_watts
            })
        {
            inner.cap_reports_changed.insert(node.to_string());
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
                metered: Vec::new(),
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
        let mut metered = Vec::new();
        for r in &hb.running {
            match slot.assigned.get(&(r.job_id, r.member)) {
                Some(a) if a.assignment.run.generation == r.generation && !a.stopping => {
                    if renew && hb.power_watts.is_some() {
                        let whole = u32::try_from(a.assignment.gpus.len()).unwrap_or(u32::MAX).saturating_mul(1000);
                        metered.push(crate::meter::MeteredRun {
                            job_id: r.job_id,
                            generation: r.generation,
                            gpu_milli: a.assignment.gpu_milli.unwrap_or(whole),
                            members: a.assignment.members,
                        });
                    }
                }
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
            metered,
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
}
