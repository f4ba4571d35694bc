//! The openb inflation experiment for chosen policies, pod lists and seeds, in parallel, printing
//! the mean GPU allocation at the end and the wall time per run:
//! `cargo run -p sim --release --example openb_table -- NODE_CSV POLICIES SEEDS POD_CSV...`
//! (`POLICIES` comma-separated, `SEEDS` like `42-51`). A policy `drome@name=value;...` runs drome's
//! placer with some [`sched::frag::DromeParams`] changed, to study them. With `DIAG=1` in the
//! environment it instead replays the first policy, seed and pod list once and prints where the
//! idle GPU share sits at the end (hole sizes, nodes short of CPU) and which requests failed.
//! `TUNE=1.1` changes the inflation target (default 1.3); `CURVE=1` also prints each run's
//! allocation at 85, 90, 95, 100, 110, 120 and 130% of arrived demand.

use sched::Demand;
use sched::frag::{DEFAULT_POPULARITY, DromeFit, DromeParams, FragMeter, TypicalPods, placer_by_name};
use sim::openb::{inflate, run_inflation};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

fn drome_params(spec: &str) -> Result<DromeParams, Box<dyn std::error::Error>> {
    let mut p = DromeParams::default();
    for kv in spec.split(';').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("bad parameter '{kv}'"))?;
        p.set(k, v.parse()?)?;
    }
    Ok(p)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: openb_table NODE_CSV POLICIES SEEDS POD_CSV...";
    let nodes = args.get(1).ok_or(usage)?;
    let policies: Vec<String> = args.get(2).ok_or(usage)?.split(',').map(str::to_string).collect();
    let seeds: Vec<u64> = match args.get(3).ok_or(usage)?.split_once('-') {
        Some((a, b)) => (a.parse()?..=b.parse()?).collect(),
        None => args[3].split('+').map(str::parse).collect::<Result<_, _>>()?,
    };
    let fleet = Arc::new(trace::load_node_list(nodes)?);
    let capacity = fleet.total_gpus() * 1000;
    let mut workloads = Vec::new();
    for path in &args[4..] {
        let t = trace::load_workloads(path, Some(trace::TraceFormat::Openb), &trace::TraceOptions::default())?;
        let demands: Vec<Demand> = t.workloads.iter().map(|w| Demand::of(w, &fleet)).collect();
        let typical = TypicalPods::from_demands(&demands);
        let meter = FragMeter::new(&typical.distribution(DEFAULT_POPULARITY), &fleet);
        let name = std::path::Path::new(path).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = name.strip_prefix("openb_pod_list_").map(str::to_string).unwrap_or(name);
        workloads.push((name, demands, typical, meter));
    }
    if std::env::var("DIAG").is_ok() {
        diagnose(&fleet, &workloads[0].1, &workloads[0].2, &policies[0], seeds[0]);
        return Ok(());
    }
    let mut tasks = Vec::new();
    for w in 0..workloads.len() {
        for p in 0..policies.len() {
            for &s in &seeds {
                tasks.push((w, p, s));
            }
        }
    }
    let results = std::sync::Mutex::new(vec![(0.0f64, 0.0f64); tasks.len()]);
    let next = AtomicUsize::new(0);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tune: f64 = std::env::var("TUNE").ok().and_then(|t| t.parse().ok()).unwrap_or(1.3);
    let curve = std::env::var("CURVE").is_ok();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(w, p, seed)) = tasks.get(i) else { break };
                    let (_, demands, typical, meter) = &workloads[w];
                    let order = inflate(demands, capacity, tune, seed).expect("inflates");
                    let mut placer = make_placer(&policies[p], typical, seed);
                    let t = Instant::now();
                    let r = run_inflation(&fleet, demands, &order, placer.as_mut(), meter, 130).expect("runs");
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    if curve {
                        let at = |k: usize| r.allocation_pct.get(k).copied().unwrap_or(f64::NAN);
                        println!("curve {} {} seed {seed}: 85 {:.2} 90 {:.2} 95 {:.2} 100 {:.2} 110 {:.2} 120 {:.2} 130 {:.2}", workloads[w].0, policies[p], at(85), at(90), at(95), at(100), at(110), at(120), at(130));
                    }
                    results.lock().expect("lock")[i] = (r.final_allocation_pct(), ms);
                }
            });
        }
    });
    let results = results.into_inner()?;
    print!("{:<12}", "workload");
    for p in &policies {
        print!(" {:>14}", p.chars().take(14).collect::<String>());
    }
    println!();
    for (w, (name, ..)) in workloads.iter().enumerate() {
        print!("{name:<12}");
        for p in 0..policies.len() {
            let v: Vec<(f64, f64)> =
                tasks.iter().zip(&results).filter(|((tw, tp, _), _)| *tw == w && *tp == p).map(|(_, r)| *r).collect();
            let mean = v.iter().map(|r| r.0).sum::<f64>() / v.len() as f64;
            let ms = v.iter().map(|r| r.1).sum::<f64>() / v.len() as f64;
            print!(" {mean:>7.2} {ms:>5.0}ms");
        }
        println!();
    }
    for (p, name) in policies.iter().enumerate() {
        let v: Vec<f64> = tasks.iter().zip(&results).filter(|((_, tp, _), _)| *tp == p).map(|(_, r)| r.0).collect();
        println!("{name}: mean over all {:.3}", v.iter().sum::<f64>() / v.len() as f64);
    }
    println!("wall {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn make_placer(name: &str, typical: &TypicalPods, seed: u64) -> Box<dyn sched::Placer> {
    let tie_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD0;
    match name.split_once('@') {
        Some((_, spec)) => Box::new(DromeFit::new(typical.clone(), drome_params(spec).expect("parameters"), tie_seed)),
        None => placer_by_name(name, typical, tie_seed).expect("policy"),
    }
}

/// Where the idle GPU share sits at the end of one run, and which requests failed.
fn diagnose(fleet: &Arc<model::Fleet>, demands: &[Demand], typical: &TypicalPods, policy: &str, seed: u64) {
    use model::GpuRequest;
    let capacity = fleet.total_gpus() * 1000;
    let order = inflate(demands, capacity, 1.3, seed).expect("inflates");
    let mut placer = make_placer(policy, typical, seed);
    let mut cluster = sched::ClusterState::new(Arc::clone(fleet));
    let kind = |d: &Demand| match d.gpu {
        GpuRequest::None => 0usize,
        GpuRequest::Fraction { .. } => 1,
        GpuRequest::Gang { gpus_per_node, .. } => 1 + gpus_per_node.min(8) as usize,
    };
    let mut failed = [0u64; 10];
    let mut failed_milli = [0u64; 10];
    let mut first_fail = [None; 10];
    let mut arrived = 0u64;
    for (seq, &i) in order.iter().enumerate() {
        let d = &demands[i];
        arrived += d.gpu.total_gpu_milli();
        match placer.place(&cluster, d) {
            Some(p) => cluster.allocate(model::WorkloadId(seq as u32), d, p).expect("valid"),
            None => {
                let k = kind(d);
                failed[k] += 1;
                failed_milli[k] += d.gpu.total_gpu_milli();
                first_fail[k].get_or_insert(100 * arrived / capacity);
            }
        }
    }
    println!("allocation {:.2}%", 100.0 * cluster.allocated_gpu_milli() as f64 / capacity as f64);
    let names = ["cpu", "share", "1gpu", "2gpu", "3", "4gpu", "5", "6", "7", "8gpu"];
    for k in 0..10 {
        if failed[k] > 0 {
            println!(
                "failed {:>5}: {:>6} pods, {:>8} milli, first at {:?}%",
                names[k], failed[k], failed_milli[k], first_fail[k]
            );
        }
    }
    // Idle share by node state.
    let gpu_pods: Vec<&Demand> = demands.iter().filter(|d| !matches!(d.gpu, GpuRequest::None)).collect();
    let (mut whole_usable, mut part_usable, mut cpu_short, mut mem_short, mut sliver) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut by_model: std::collections::BTreeMap<String, u64> = Default::default();
    let mut short_by: std::collections::BTreeMap<String, u64> = Default::default();
    let mut short_cpu_only = 0u64;
    let mut short_holes = Vec::new();
    for n in 0..cluster.node_count() {
        let node = model::NodeId(n as u32);
        let free: u64 = cluster.gpu_free_milli(node).iter().map(|&f| u64::from(f)).sum();
        if free == 0 {
            continue;
        }
        let m = cluster.node_model(node).map(|m| fleet.gpu_models[m.0 as usize].name.clone()).unwrap_or_default();
        *by_model.entry(m).or_default() += free;
        let fits = gpu_pods.iter().any(|d| cluster.member_fits(node, d));
        if fits {
            if cluster.full_free_gpus(node) > 0 {
                whole_usable += free
            } else {
                part_usable += free
            }
            continue;
        }
        let cpu_ok = gpu_pods.iter().any(|d| d.cpu_milli <= cluster.free_cpu_milli(node));
        let mem_ok = gpu_pods.iter().any(|d| d.memory_mib <= cluster.free_memory_mib(node));
        if !cpu_ok {
            cpu_short += free;
            let mut cpu_only = 0u64;
            for (_, p) in cluster.allocations() {
                for m in &p.members {
                    if m.node == node && m.gpus.is_empty() {
                        cpu_only += m.cpu_milli;
                    }
                }
            }
            let m = cluster.node_model(node).map(|m| fleet.gpu_models[m.0 as usize].name.clone()).unwrap_or_default();
            *short_by.entry(m).or_default() += 1;
            short_cpu_only += cpu_only;
            short_holes.push(cluster.gpu_free_milli(node).iter().filter(|f| **f > 0).copied().collect::<Vec<_>>());
        } else if !mem_ok {
            mem_short += free
        } else {
            sliver += free
        }
    }
    let pct = |x: u64| 100.0 * x as f64 / capacity as f64;
    println!(
        "cpu-short nodes {short_by:?}, cpu-only pods' cpu on them {} cores; holes {:?}",
        short_cpu_only / 1000,
        &short_holes[..short_holes.len().min(40)]
    );
    let mut placed: std::collections::BTreeMap<u32, u64> = Default::default();
    for (j, p) in cluster.allocations() {
        if let GpuRequest::Fraction { gpu_milli } = demands[order[j.0 as usize]].gpu {
            let _ = p;
            *placed.entry(gpu_milli).or_default() += 1;
        }
    }
    println!("placed shares by size: {placed:?}");
    let mut holes: std::collections::BTreeMap<u16, u64> = Default::default();
    let mut whole_on_cpu_short: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for n in 0..cluster.node_count() {
        let node = model::NodeId(n as u32);
        for &f in cluster.gpu_free_milli(node) {
            if f > 0 && f < 1000 {
                *holes.entry(f / 10 * 10).or_default() += u64::from(f);
            }
        }
        let full = u64::from(cluster.full_free_gpus(node));
        if full > 0 {
            let m = cluster.node_model(node).map(|m| fleet.gpu_models[m.0 as usize].name.clone()).unwrap_or_default();
            let e = whole_on_cpu_short
                .entry(format!(
                    "{m} cpu_free={} mem_free={}",
                    cluster.free_cpu_milli(node),
                    cluster.free_memory_mib(node)
                ))
                .or_default();
            e.0 += 1;
            e.1 += full;
        }
    }
    println!(
        "hole milli by hole size: {:?}",
        holes.iter().filter(|(_, v)| **v >= 2000).map(|(k, v)| (*k, *v / 1000)).collect::<Vec<_>>()
    );
    println!("partial holes total {:.2}%", pct(holes.values().sum()));
    for (k, (nodes, gpus)) in &whole_on_cpu_short {
        if *gpus >= 3 {
            println!("  whole free: {k}: {nodes} nodes {gpus} gpus");
        }
    }
    println!(
        "idle: usable(whole) {:.2}% usable(part) {:.2}% cpu-short {:.2}% mem-short {:.2}% other(sliver/combo) {:.2}%",
        pct(whole_usable),
        pct(part_usable),
        pct(cpu_short),
        pct(mem_short),
        pct(sliver)
    );
    for (m, f) in by_model {
        println!("  idle on {m}: {:.2}%", pct(f));
    }
}
