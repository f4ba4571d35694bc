//! Deferrable jobs wait for cheaper hours; the rest run as before.

use energy::{EnergyModel, GridYear, HeatOptions, TemperatureYear};
use model::{Cooling, Fleet, GpuRequest, SimDuration, SimTime, Workload};
use sched::defer::{DeferFor, DeferralGate};
use sched::policy_by_name;
use sched::power::PowerMode;
use sim::{PowerOptions, SimConfig, SimReport, simulate};
use std::sync::Arc;

mod common;

fn fleet() -> Arc<Fleet> {
    common::fleet(5, 8, "H200", Cooling::Immersion, None)
}

/// A grid year whose price is 100 EUR/MWh except 20 EUR/MWh from 03:00 to 06:00 every day.
fn grid() -> GridYear {
    let mut csv = String::from("hour,price_eur_per_mwh,co2_g_per_kwh\n");
    for h in 0..8760 {
        let cheap = (3..6).contains(&(h % 24));
        csv.push_str(&format!("{h},{},{}\n", if cheap { 20 } else { 100 }, 50));
    }
    GridYear::parse(&csv).unwrap()
}

fn power(f: &Fleet) -> Arc<PowerOptions> {
    Arc::new(PowerOptions {
        model: EnergyModel::new(f, None, &HeatOptions::default()),
        temperature: TemperatureYear::constant(15.0),
        grid: grid(),
        start_hour: 0,
        cap_watts: None,
        mode: PowerMode::Admission,
        price_cap: None,
    })
}

fn jobs(deferrable: bool) -> Vec<Workload> {
    // Eight 8-GPU one-hour jobs submitted at 20:00, half of them deferrable when asked, and a
    // 1-GPU job from 20:00 to 06:00 so that both runs are accounted over the same hours.
    let mut v: Vec<Workload> = (0..8)
        .map(|i| Workload {
            deferrable: deferrable && i % 2 == 0,
            ..Workload::gpu_job(
                i,
                SimTime::from_secs(20 * 3600 + u64::from(i)),
                GpuRequest::whole_gpus(8, 8),
                Some(SimDuration::from_secs(3600)),
            )
        })
        .collect();
    let long = Some(SimDuration::from_secs(10 * 3600));
    v.push(Workload::gpu_job(8, SimTime::from_secs(20 * 3600 + 8), GpuRequest::whole_gpus(1, 8), long));
    v
}

fn run(js: &[Workload], gate: bool) -> SimReport {
    let f = fleet();
    let p = power(&f);
    let deferral = gate.then(|| Arc::new(DeferralGate::new(p.deferral_costs(DeferFor::Price), p.start_hour)));
    let config = SimConfig { power: Some(p), deferral, keep_records: true, ..SimConfig::default() };
    let mut policy = policy_by_name("fifo", 1).unwrap();
    simulate(f, js, policy.as_mut(), &config, &mut |_| {}).unwrap()
}

#[test]
fn deferrable_jobs_start_in_the_cheap_hours_and_cost_less() {
    let plain = run(&jobs(true), false);
    let gated = run(&jobs(true), true);
    assert_eq!(gated.completed, 9);
    assert_eq!(gated.deferrable_jobs, 4);
    assert_eq!(gated.deferred_jobs, 4);
    for r in &gated.records {
        let start_h = r.start_s.unwrap() / 3600.0;
        if r.id.0 % 2 == 0 && r.id.0 < 8 {
            // Held to 03:00 the next day (hour 27), then queued: 4 free nodes, 4 jobs, all start.
            assert_eq!(start_h, 27.0, "{r:?}");
        } else {
            assert!(start_h < 21.0, "{r:?}");
        }
    }
    // Waits count from the submit time.
    assert!(gated.mean_wait_s > 3.0 * 3600.0 && plain.mean_wait_s < 3600.0);
    let (pe, ge) = (plain.power.unwrap(), gated.power.unwrap());
    assert!(ge.energy_cost_eur < pe.energy_cost_eur, "{} vs {}", ge.energy_cost_eur, pe.energy_cost_eur);
}

#[test]
fn jobs_not_marked_deferrable_ignore_the_gate() {
    let plain = run(&jobs(false), false);
    let gated = run(&jobs(false), true);
    assert_eq!(gated.deferrable_jobs, 0);
    assert_eq!(plain.mean_jct_s, gated.mean_jct_s);
    assert_eq!(plain.records, gated.records);
}
