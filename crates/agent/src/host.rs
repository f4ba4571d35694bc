//! One agent process serving many nodes (`drome agent --node-count N`, `drome up`): one HTTP
//! connection and one batched heartbeat (`POST /v1/agent/heartbeats`) for all of them. A batch
//! lists the nodes with something to report and, once per heartbeat period, every node (which
//! renews its lease); the server answers for the nodes that have work. So a node whose state did
//! not change costs one short entry per period, and the server holds one call per process.

use crate::AgentError;
use crate::runner::{Backoff, NodeAgent, NodeConfig};
use api::{HeartbeatBatch, HeartbeatBatchReply, NodeHeartbeat, RunExit};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How soon an end is reported while runs are live: the held call lasts at most this long.
const EXIT_REPORT: Duration = Duration::from_millis(100);

/// Nodes joined between two heartbeats while a host's nodes join.
const JOINS_PER_ROUND: usize = 128;

/// The nodes of one agent process and their shared connection.
pub struct AgentHost {
    /// The replicas, shared with the nodes (their joins and logs).
    servers: Arc<crate::Servers>,
    http: reqwest::Client,
    /// Names this process to the server, which wakes its held call for any of its nodes.
    agent_id: String,
    nodes: Vec<NodeAgent>,
    exit_rx: mpsc::UnboundedReceiver<(usize, RunExit)>,
    /// Nodes with something to report since their last listing.
    changed: BTreeSet<usize>,
    /// Node index by name, to route the server's answers.
    index: std::collections::HashMap<String, usize>,
    /// The number of the last answer received, told to the server with every call.
    last_answer: u64,
}

impl AgentHost {
    /// A host for `configs` (all for the same server).
    pub fn new(configs: Vec<NodeConfig>) -> Result<AgentHost, AgentError> {
        let http = crate::runner::http_client(configs.first().and_then(|c| c.trust.as_ref()))?;
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let servers = crate::Servers::parse(&configs.first().map(|c| c.server.clone()).unwrap_or_default());
        let mut nodes = Vec::with_capacity(configs.len());
        for (i, cfg) in configs.into_iter().enumerate() {
            nodes.push(NodeAgent::in_host(cfg, http.clone(), i, exit_tx.clone(), servers.clone())?);
        }
        let agent_id = format!("{}-{}-{}", std::process::id(), crate::runner::random_suffix(), nodes.len());
        let changed = (0..nodes.len()).collect();
        let index = nodes.iter().enumerate().map(|(i, n)| (n.name().to_string(), i)).collect();
        Ok(AgentHost { servers, http, agent_id, nodes, exit_rx, changed, index, last_answer: 0 })
    }

    fn take_exit(&mut self, index: usize, e: RunExit) {
        if let Some(n) = self.nodes.get_mut(index) {
            n.take_exit(e);
            self.changed.insert(index);
        }
    }

    /// Joins up to `at_most` nodes without a credential; a node refused for good stops the host.
    /// How many joined, and whether a join failed (to be tried again later).
    async fn join_missing(&mut self, at_most: usize) -> Result<(usize, bool), AgentError> {
        // All at once: the server stores the joins that arrive together in one commit.
        let joins = self.nodes.iter_mut().filter(|n| n.credential().is_none()).take(at_most).map(|n| async move {
            let joined = n.join().await;
            (n.name().to_string(), joined)
        });
        let (mut joined, mut failed) = (0, false);
        for (name, result) in futures_util::future::join_all(joins).await {
            match result {
                Ok(_) => joined += 1,
                Err(AgentError::Refused(m)) => return Err(AgentError::Refused(format!("node {name}: {m}"))),
                Err(e) => {
                    if !failed {
                        tracing::warn!(node = %name, error = %e, "join failed; retrying");
                    }
                    failed = true;
                }
            }
        }
        Ok((joined, failed))
    }

    /// Joins and heartbeats for every node until the process ends.
    pub async fn run(mut self) -> Result<(), AgentError> {
        let mut backoff = Backoff::default();
        // Every node is listed at least this often, which renews its lease.
        let period = self.nodes.first().map_or(Duration::from_secs(5), |n| n.heartbeat_period());
        let mut listed_all_at: Option<Instant> = None;
        let (mut join_retry_at, mut join_delay): (Option<Instant>, Duration) = (None, Duration::ZERO);
        loop {
            let join_due = join_retry_at.is_none_or(|t| Instant::now() >= t);
            if join_due && self.nodes.iter().any(|n| n.credential().is_none()) {
                // A few at a time, with heartbeats between: the nodes that joined first keep
                // their leases while the rest join.
                let (joined, failed) = self.join_missing(JOINS_PER_ROUND).await?;
                // A node that cannot join now (held, removed, the server away) is tried again
                // later, not at every turn of the loop.
                if failed {
                    join_delay = (join_delay * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                    join_retry_at = Some(Instant::now() + join_delay);
                } else {
                    join_delay = Duration::ZERO;
                    join_retry_at = None;
                }
                if joined > 0 {
                    tracing::debug!(nodes = joined, "nodes joined");
                    listed_all_at = None;
                    if self.nodes.iter().all(|n| n.credential().is_some()) {
                        tracing::info!(nodes = self.nodes.len(), "every node joined");
                    }
                } else if self.nodes.iter().all(|n| n.credential().is_none()) {
                    backoff.wait().await;
                    continue;
                }
            }
            let period = self.nodes.first().map_or(period, |n| n.heartbeat_period());
            while let Ok((i, e)) = self.exit_rx.try_recv() {
                self.take_exit(i, e);
            }
            let now = Instant::now();
            let mut fence_at: Option<Instant> = None;
            for n in &mut self.nodes {
                if let Some(t) = n.check_fence(now) {
                    fence_at = Some(fence_at.map_or(t, |f| f.min(t)));
                }
            }
            let all = listed_all_at.is_none_or(|t| now.duration_since(t) >= period);
            let listed: Vec<usize> =
                if all { (0..self.nodes.len()).collect() } else { self.changed.iter().copied().collect() };
            let news = listed.iter().any(|&i| self.nodes[i].has_news());
            let next_full = listed_all_at.map_or(now, |t| t + period);
            let until_full = if all { period } else { next_full.saturating_duration_since(now) };
            let joining = self.nodes.iter().any(|n| n.credential().is_none());
            let wait = if news || (joining && join_retry_at.is_none()) {
                Duration::ZERO
            } else if let Some(t) = join_retry_at.filter(|_| joining) {
                t.saturating_duration_since(now).min(until_full)
            } else if self.nodes.iter().any(NodeAgent::has_live_runs) {
                until_full.min(EXIT_REPORT)
            } else {
                until_full
            };
            let mut entries = Vec::with_capacity(listed.len());
            let mut sent_exits = Vec::with_capacity(listed.len());
            for &i in &listed {
                let n = &self.nodes[i];
                let Some(credential) = n.credential() else { continue };
                let heartbeat = n.heartbeat_body();
                sent_exits.push((i, heartbeat.exited.len()));
                entries.push(NodeHeartbeat {
                    node: n.name().to_string(),
                    credential: credential.to_string(),
                    heartbeat,
                });
            }
            let batch = HeartbeatBatch {
                agent_id: self.agent_id.clone(),
                nodes: entries,
                wait_ms: wait.as_millis() as u64,
                last_answer: self.last_answer,
            };
            for i in &listed {
                self.changed.remove(i);
            }
            let sent_at = Instant::now();
            let (at, server) = self.servers.current();
            let request = self.http.post(format!("{server}/v1/agent/heartbeats")).json(&batch).send();
            // A held call is never dropped for news (its answer could carry work): ends are
            // reported with the next call, within EXIT_REPORT while runs are live.
            let response = tokio::select! {
                r = request => r,
                _ = tokio::time::sleep_until(fence_at.unwrap_or(sent_at)), if fence_at.is_some() => {
                    self.changed.extend(listed);
                    continue;
                }
            };
            let reply = match response {
                Ok(r) if r.status().is_success() => r.json::<HeartbeatBatchReply>().await,
                Ok(r) => {
                    if crate::Servers::not_leading(r.status()) {
                        self.servers.failed(at);
                    }
                    tracing::warn!(status = %r.status(), nodes = listed.len(), "batched heartbeat refused; retrying");
                    self.changed.extend(listed);
                    backoff.wait().await;
                    continue;
                }
                Err(e) => {
                    self.servers.failed(at);
                    Err(e)
                }
            };
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, nodes = listed.len(), "batched heartbeat failed; retrying");
                    self.changed.extend(listed);
                    backoff.wait().await;
                    continue;
                }
            };
            backoff.reset();
            self.last_answer = self.last_answer.max(reply.answer);
            if all {
                listed_all_at = Some(sent_at);
            }
            for (i, exits) in sent_exits {
                self.nodes[i].renewed(sent_at, reply.lease_ms, exits);
            }
            let applying = Instant::now();
            let answers = reply.nodes.len();
            for r in reply.nodes {
                let Some(&i) = self.index.get(r.node.as_str()) else { continue };
                let n = &mut self.nodes[i];
                if r.error.is_some() {
                    n.drop_credential();
                    continue;
                }
                if let Some(reply) = r.reply {
                    n.apply(reply);
                    // What it started or stopped changes what it reports.
                    self.changed.insert(i);
                }
            }
            let took = applying.elapsed();
            if took > Duration::from_secs(1) {
                tracing::warn!(nodes = answers, ms = took.as_millis() as u64, "applying the server's answer was slow");
            }
            let round = sent_at.elapsed();
            if round > period * 2 {
                tracing::warn!(nodes = listed.len(), all, ms = round.as_millis() as u64, "a heartbeat round was slow");
            }
        }
    }
}
