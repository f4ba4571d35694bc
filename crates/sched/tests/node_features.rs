//! Work that needs a node feature (such as a container runtime) is placed only on nodes that
//! offer it, by every policy and placer; without such a node it waits.

mod common;

use common::{fleet, job};
use model::{GpuRequest, SimTime};
use sched::{ClusterState, Decision, Demand, Queue, QueuedJob, policy_by_name, policy_names};
use std::sync::Arc;

const IMAGES: u64 = 1;

/// A queue of four jobs needing `IMAGES`: whole GPUs, a gang of two, a share, CPU only.
fn queue(cluster: &ClusterState) -> Queue {
    let mut q = Queue::with_generation(1);
    let shapes = [
        GpuRequest::whole_gpus(2, 8),
        GpuRequest::Gang { nodes: 2, gpus_per_node: 4 },
        GpuRequest::fraction(250),
        GpuRequest::None,
    ];
    for (id, gpu) in shapes.into_iter().enumerate() {
        let w = Arc::new(job(id as u32, gpu));
        let mut d = Demand::of(&w, cluster.fleet());
        d.node_features = IMAGES;
        q.push(QueuedJob::new(w, d, SimTime::ZERO));
    }
    q
}

#[test]
fn every_policy_places_featured_work_only_on_nodes_that_offer_it() {
    let nodes = [(8, "H200"); 6];
    for (name, _) in policy_names() {
        let mut cluster = ClusterState::new(fleet(&nodes));
        // Nodes 1, 4 and 5 run images; the others (node 0 the lowest-numbered) do not.
        cluster.set_node_features(model::NodeId(1), IMAGES);
        cluster.set_node_features(model::NodeId(4), IMAGES | 2);
        cluster.set_node_features(model::NodeId(5), IMAGES);
        let mut policy = policy_by_name(name, 7).unwrap();
        let decisions = policy.schedule(SimTime::ZERO, &queue(&cluster), &mut cluster);
        let mut started = 0;
        for d in &decisions {
            if let Decision::Start { placement, .. } = d {
                started += 1;
                for m in &placement.members {
                    assert!(cluster.node_features(m.node) & IMAGES != 0, "{name} placed on node {:?}", m.node);
                }
            }
        }
        assert_eq!(started, 4, "{name} started {started} of the 4 jobs: {decisions:?}");
        cluster.verify().unwrap();

        // No node offers it: nothing starts, whatever is free.
        let mut bare = ClusterState::new(fleet(&nodes));
        let mut policy = policy_by_name(name, 7).unwrap();
        let decisions = policy.schedule(SimTime::ZERO, &queue(&bare), &mut bare);
        assert!(
            !decisions.iter().any(|d| matches!(d, Decision::Start { .. })),
            "{name} started work on nodes without the feature: {decisions:?}"
        );
    }
}
