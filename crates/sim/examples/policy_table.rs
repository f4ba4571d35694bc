//! Runs several policies on one trace at one offered load and prints a table with wall times:
//! `cargo run -p sim --release --example policy_table -- TRACE LOAD fifo,tiresias,drome`.

use sim::{LoadFleetShape, SimConfig, fleet_for_load, simulate};
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: policy_table TRACE LOAD POLICIES")?;
    let load: f64 = args.get(2).map_or(Ok(0.85), |s| s.parse())?;
    let policies = args.get(3).map_or("fifo,tiresias,drome", String::as_str);
    let trace = trace::load_workloads(path, None, &trace::TraceOptions::default())?;
    let fleet = Arc::new(fleet_for_load(&trace.workloads, load, &LoadFleetShape::default()));
    println!("{} jobs, {} GPUs, load {load}", trace.workloads.len(), fleet.total_gpus());
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9} {:>7} {:>6} {:>6} {:>7}",
        "policy",
        "meanJCT_h",
        "p50JCT_h",
        "p99JCT_h",
        "wait_h",
        "preempt",
        "lostGPUh",
        "sw/gang",
        "jain",
        "util",
        "wall_s"
    );
    for name in policies.split(',') {
        // `drome:MARGIN:TENANT(0|1):MIN_RUNTIME_S:WINDOW:REFRESH:SIBLING_GAP_S` studies drome's
        // parameters.
        let mut policy: Box<dyn sched::Policy> = match name.split(':').collect::<Vec<_>>().as_slice() {
            ["drome", m, t, r, w, f, g] => Box::new(sched::rankers::drome_with(
                sched::PreemptConfig { min_runtime: model::SimDuration::from_secs(r.parse()?), ..Default::default() },
                sched::rankers::DromeParams {
                    margin: m.parse()?,
                    per_tenant: *t == "1",
                    window: w.parse()?,
                    refresh_every: f.parse()?,
                    batch_gap: model::SimDuration::from_secs(g.parse()?),
                },
            )),
            _ => sched::policy_by_name(name, 42)?,
        };
        let t = Instant::now();
        let r = simulate(fleet.clone(), &trace.workloads, policy.as_mut(), &SimConfig::default(), &mut |_| {})?;
        let wall = t.elapsed().as_secs_f64();
        println!(
            "{:<10} {:>10.2} {:>10.2} {:>10.1} {:>10.2} {:>8} {:>9.0} {:>7.2} {:>6.3} {:>6.3} {:>7.2}  done {} unfinished {}",
            r.policy,
            r.mean_jct_s / 3600.0,
            r.p50_jct_s / 3600.0,
            r.p99_jct_s / 3600.0,
            r.mean_wait_s / 3600.0,
            r.preemptions,
            r.lost_gpu_hours,
            r.mean_switches_per_gang,
            r.jain_fairness,
            r.gpu_utilization,
            wall,
            r.completed,
            r.unfinished
        );
    }
    Ok(())
}
