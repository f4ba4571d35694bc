//! Prometheus metrics: queue length, running jobs, allocated GPUs, placement latency, API latency,
//! the leader's epoch, lease takeovers and renewal latency.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    pub queue_length: Gauge,
    pub running_jobs: Gauge,
    pub allocated_gpus: Gauge,
    pub placement_seconds: Histogram,
    pub api_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// The epoch of the lease this server leads in (0 while it does not lead).
    pub leader_epoch: Gauge,
    /// Times this server took the leader's lease.
    pub leader_acquired: prometheus_client::metrics::counter::Counter,
    pub lease_renew_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("drome");
        let queue_length = Gauge::default();
        let running_jobs = Gauge::default();
        let allocated_gpus = Gauge::default();
        let placement_seconds = latency_histogram();
        let api_seconds = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register("queue_length", "Jobs waiting in the queue", queue_length.clone());
        registry.register("running_jobs", "Jobs scheduled or running", running_jobs.clone());
        registry.register("allocated_gpus", "GPUs held by scheduled and running jobs", allocated_gpus.clone());
        registry.register(
            "placement_latency_seconds",
            "Time of one scheduling round: rebuilding the cluster and running the policy",
            placement_seconds.clone(),
        );
        registry.register("api_latency_seconds", "Time to answer an API request", api_seconds.clone());
        let leader_epoch = Gauge::default();
        let leader_acquired = prometheus_client::metrics::counter::Counter::default();
        let lease_renew_seconds = latency_histogram();
        registry.register(
            "leader_epoch",
            "Epoch of the lease this server leads in, 0 if it does not lead",
            leader_epoch.clone(),
        );
        registry.register("leader_acquired", "Times this server took the leader's lease", leader_acquired.clone());
        registry.register(
            "lease_renew_seconds",
            "Time to renew the leader's lease in the store",
            lease_renew_seconds.clone(),
        );
        Metrics {
            registry,
            queue_length,
            running_jobs,
            allocated_gpus,
            placement_seconds,
            api_seconds,
            leader_epoch,
            leader_acquired,
            lease_renew_seconds,
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
