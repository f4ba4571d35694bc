//! What one placement and start costs in the live scheduler's path, at fleet scale: the event
//! taken into the live state, the policy's round over the live cluster and queue, the start
//! applied to the live state. The baseline, timed in the same process, is what every round cost
//! before the live state: a cluster rebuilt from every running job.

use super::live::{LiveState, Place};
use model::Fleet;
use std::sync::Arc;
use std::time::Instant;

/// Figures of [`live_start_cost`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct LiveStartCost {
    pub nodes: usize,
    pub running_jobs: usize,
    /// Jobs placed and started one at a time, each in a round of its own.
    pub starts: usize,
    pub us_per_start: f64,
    /// Rebuilding the cluster from every running job, as each round did before.
    pub baseline_us_per_round: f64,
    pub speedup: f64,
    /// With the power guard: one walk over every node and running job, the floor of what the
    /// guard cost per round before it read its loads from the cluster's sums.
    pub guard_walk_us: Option<f64>,
    /// Filling the fleet with the running jobs (the start-up read's cost in memory).
    pub fill_ms: f64,
}

/// A pending job of `tenant_id` asking `nodes` x `gpus_per_node` GPUs, submitted at `id` ms:
/// the benchmark's submissions, and the live state's tests'.
pub(crate) fn pending_job(id: i64, tenant_id: i64, gpus_per_node: i64, nodes: i64, priority: i64) -> store::Job {
    store::Job {
        id,
        spec: store::NewJob {
            tenant_id,
            name: String::new(),
            command: Some("true".into()),
            args_json: "[]".into(),
            env_json: "{}".into(),
            gpus_per_node,
            nodes,
            gpu_milli: None,
            cpu_milli: 0,
            memory_mib: 0,
            image: None,
            gpu_model: None,
            priority,
            deferrable: false,
            federated: false,
            max_runtime_s: None,
            restart_policy: "never".into(),
            max_restarts: 0,
            idempotency_key: None,
            request_hash: String::new(),
        },
        state: store::JobState::Pending,
        generation: 0,
        placement_json: None,
        exit_code: None,
        message: None,
        submitted_ms: id,
        started_ms: None,
        finished_ms: None,
    }
}

fn job(id: i64, gpus_per_node: i64) -> store::Job {
    pending_job(id, 1 + id % 16, gpus_per_node, 1, 0)
}

/// Fills `fleet` with `running` whole-node jobs, then times `starts` more, each submitted,
/// placed by `policy` and started in a round of its own (and ended after, so the fleet stays
/// as full); with `power`, every round goes through the power guard of the fleet's site caps, as
/// the server's does. `None` if the policy is unknown, or `power` is asked of a fleet without caps.
pub fn live_start_cost(
    fleet: Arc<Fleet>,
    policy: &str,
    running: usize,
    starts: usize,
    power: Option<sched::power::PowerMode>,
) -> Option<LiveStartCost> {
    let mut policy = sched::policy_by_name(policy, 0).ok()?;
    let mut guard = match power {
        Some(mode) => Some(crate::power_guard(&fleet, mode)?),
        None => None,
    };
    let per_node = i64::from(fleet.max_gpus_per_node());
    let mut live = LiveState::new(fleet.clone(), 1);
    let mut round = |live: &mut LiveState, policy: &mut Box<dyn sched::Policy>| {
        live.order_queue();
        let now = model::SimTime::ZERO;
        if let Some(g) = guard.as_mut() {
            g.before(&mut live.cluster);
        }
        let decisions = policy.schedule(now, &live.queue, &mut live.cluster);
        let decisions = match guard.as_mut() {
            Some(g) => {
                let kept = g.after(&mut live.cluster, decisions);
                for id in g.take_undone() {
                    if let (Some(job), Some(seq)) = (live.queue.get(id), live.queue.seq(id)) {
                        policy.start_undone(job, seq, now);
                    }
                }
                kept
            }
            None => decisions,
        };
        for d in decisions {
            if let sched::Decision::Start { job, placement } = d
                && let Some(id) = live.job_id_of(job)
            {
                if let Some(j) = live.job_mut(id) {
                    j.job.state = store::JobState::Assigned;
                }
                live.started(id, placement);
            }
        }
    };
    let t0 = Instant::now();
    let mut next = 1i64;
    while (next as usize) <= running {
        let _ = live.add_pending(job(next, per_node), None, 0);
        next += 1;
        if next % 4096 == 0 {
            round(&mut live, &mut policy);
        }
    }
    round(&mut live, &mut policy);
    let fill_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t0 = Instant::now();
    for _ in 0..starts {
        let id = next;
        next += 1;
        let _ = live.add_pending(job(id, per_node), None, 0);
        round(&mut live, &mut policy);
        // Ends right after, so every start meets the same fleet.
        if matches!(live.job(id).map(|j| &j.place), Some(Place::Placed(_))) {
            live.remove(id);
        }
    }
    let us_per_start = t0.elapsed().as_secs_f64() * 1e6 / starts.max(1) as f64;

    // The baseline: one round's rebuild of the cluster from every running job.
    let placed: Vec<(model::WorkloadId, sched::Demand, sched::Placement)> =
        live.placed().map(|(j, p)| (j.wid, j.demand.clone(), p.clone())).collect();
    let rounds = 3;
    let t0 = Instant::now();
    for _ in 0..rounds {
        let mut cluster = sched::ClusterState::new(fleet.clone());
        for (wid, demand, p) in &placed {
            let _ = cluster.allocate(*wid, demand, p.clone());
        }
        std::hint::black_box(&cluster);
    }
    let baseline_us_per_round = t0.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    let guard_walk_us = power.map(|_| {
        let t0 = Instant::now();
        let mut sum = 0.0;
        for _ in 0..rounds {
            for id in fleet.node_ids() {
                sum += f64::from(live.cluster.gpu_free_milli(id).iter().map(|&m| u32::from(m)).sum::<u32>());
            }
            sum += live.cluster.allocations().map(|(_, p)| p.gpu_milli() as f64).sum::<f64>();
        }
        std::hint::black_box(sum);
        t0.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    });
    Some(LiveStartCost {
        nodes: fleet.nodes.len(),
        running_jobs: live.placed_jobs(),
        starts,
        us_per_start,
        baseline_us_per_round,
        speedup: baseline_us_per_round / us_per_start.max(1e-9),
        guard_walk_us,
        fill_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_bench_fills_the_fleet_and_times_every_start() {
        let fleet = Arc::new(model::fleet_toml::parse_fleet(include_str!("../../../../fleets/small.toml")).unwrap());
        // The small fleet has six 8-GPU nodes: four run, each timed start takes a free one.
        let cost = live_start_cost(fleet.clone(), "fifo", 4, 50, None).expect("fifo is a policy");
        assert_eq!((cost.nodes, cost.running_jobs, cost.starts), (8, 4, 50));
        assert!(cost.us_per_start > 0.0 && cost.baseline_us_per_round > 0.0, "{cost:?}");
        assert!(
            live_start_cost(
                Arc::new(model::fleet_toml::parse_fleet(include_str!("../../../../fleets/small.toml")).unwrap()),
                "nope",
                1,
                1,
                None
            )
            .is_none()
        );
        // Through the power guard, under a cap far above the fleet's draw.
        let mut capped = (*fleet).clone();
        for s in &mut capped.sites {
            s.grid_power_cap_watts = Some(1.0e9);
        }
        let mode = sched::power::PowerMode::Admission;
        let cost = live_start_cost(Arc::new(capped), "fifo", 4, 20, Some(mode)).expect("capped fleet");
        assert_eq!(cost.running_jobs, 4, "{cost:?}");
        assert!(cost.guard_walk_us.is_some_and(|w| w > 0.0), "{cost:?}");
        let mut uncapped = (*fleet).clone();
        for s in &mut uncapped.sites {
            s.grid_power_cap_watts = None;
        }
        assert!(live_start_cost(Arc::new(uncapped), "fifo", 4, 20, Some(mode)).is_none(), "no caps, no guard");
    }
}
