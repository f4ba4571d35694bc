//! Times the import of a trace or node list: `cargo run --release -p trace --example load -- FILE...`.
//! drome's users replay traces of hundreds of thousands of jobs; this keeps the import cost visible.

use std::time::Instant;
use trace::{DetectedFormat, TraceOptions};

fn main() {
    for path in std::env::args().skip(1) {
        let start = Instant::now();
        let result = trace::sniff_format(&path).and_then(|format| match format {
            DetectedFormat::Workloads(f) => trace::load_workloads(&path, Some(f), &TraceOptions::default())
                .map(|t| format!("{} workloads, {} tenants ({f})", t.workloads.len(), t.tenants.len())),
            DetectedFormat::NodeList(_) => trace::load_node_list(&path)
                .map(|fleet| format!("{} nodes, {} GPUs", fleet.nodes.len(), fleet.total_gpus())),
        });
        let elapsed = start.elapsed();
        match result {
            Ok(summary) => println!("{path}: {summary} in {:.1} ms", elapsed.as_secs_f64() * 1000.0),
            Err(e) => println!("error: {e}"),
        }
    }
}
