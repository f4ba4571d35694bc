//! Writes one CSV row per job (tenant, GPUs, submit, start, finish, duration, preemptions) for each
//! policy, for studies of where the completion time goes:
//! `cargo run -p sim --release --example policy_records -- TRACE LOAD POLICIES OUT_DIR`.

use sim::{LoadFleetShape, SimConfig, fleet_for_load, simulate};
use std::io::Write;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: policy_records TRACE LOAD POLICIES OUT_DIR")?;
    let load: f64 = args.get(2).map_or(Ok(0.85), |s| s.parse())?;
    let policies = args.get(3).map_or("tiresias,srpt,drome", String::as_str);
    let out = args.get(4).map_or(".", String::as_str);
    let trace = trace::load_workloads(path, None, &trace::TraceOptions::default())?;
    let fleet = Arc::new(fleet_for_load(&trace.workloads, load, &LoadFleetShape::default()));
    let config = SimConfig { keep_records: true, ..SimConfig::default() };
    for name in policies.split(',') {
        let mut policy = sched::policy_by_name(name, 42)?;
        let r = simulate(fleet.clone(), &trace.workloads, policy.as_mut(), &config, &mut |_| {})?;
        let last_submit = trace.workloads.iter().map(|w| w.submit_time.as_millis()).max().unwrap_or(0) as f64 / 1000.0;
        let first = r.series.first().map_or(0.0, |p| p.t_s);
        let (mut area, mut qarea) = (0.0, 0.0);
        for w in r.series.windows(2) {
            let t1 = w[1].t_s.min(last_submit);
            if t1 > w[0].t_s {
                area += w[0].gpu_allocation * (t1 - w[0].t_s);
                qarea += f64::from(w[0].queue_len) * (t1 - w[0].t_s);
            }
        }
        let span = (last_submit - first).max(1.0);
        println!("{name}: allocation while jobs arrive {:.3}, mean queue {:.1}", area / span, qarea / span);
        let mut f = std::io::BufWriter::new(std::fs::File::create(format!("{out}/{name}-{load}.csv"))?);
        writeln!(f, "id,tenant,gpus,submit_s,start_s,finish_s,duration_s,preemptions,gpu_hours,lost_gpu_hours")?;
        for j in &r.records {
            let opt = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.0}"));
            writeln!(
                f,
                "{},{},{},{:.0},{},{},{},{},{:.3},{:.3}",
                j.id.0,
                j.tenant,
                j.gpus,
                j.submit_s,
                opt(j.start_s),
                opt(j.finish_s),
                opt(j.duration_s),
                j.preemptions,
                j.gpu_hours,
                j.lost_gpu_hours
            )?;
        }
    }
    Ok(())
}
