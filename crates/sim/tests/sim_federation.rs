//! The multi-site twin: each job runs at one site its constraints allow, every job is accounted
//! for, the same inputs give the same result, and the dispatch policies do what they say.

use dispatch::{Dataset, DispatchPolicy, JobNeeds};
use energy::{EnergyModel, GridYear, HeatOptions, TemperatureYear};
use model::{GpuRequest, SimDuration, SimTime, SiteId, TenantId, Workload, fleet_toml::parse_fleet};
use sched::power::PowerMode;
use sim::{FederationConfig, FederationReport, PowerOptions, SimConfig, SiteRun, simulate_federation};
use std::sync::Arc;

const FLEET: &str = r#"
name = "three"
[node_types.h]
cpu_milli = 224000
memory_mib = 2097152
gpus = 8
gpu_model = "H200"
[node_types.a]
cpu_milli = 256000
memory_mib = 2097152
gpus = 8
gpu_model = "A100-SXM4-80GB"

[[sites]]
name = "north"
region = "R1"
cooling = "immersion"
grid_power_cap_mw = 0.05
fiber_gbps = 100
heat_network = { base_mw = 0.001 }
[[sites.halls]]
name = "n"
[[sites.halls.racks]]
count = 1
nodes_per_rack = 4
node_type = "h"

[[sites]]
name = "south"
region = "R2"
cooling = "immersion"
grid_power_cap_mw = 0.05
price_adder_eur_per_mwh = -20.0
fiber_gbps = 100
heat_network = { base_mw = 0.001 }
[[sites.halls]]
name = "s"
[[sites.halls.racks]]
count = 1
nodes_per_rack = 4
node_type = "h"

[[sites]]
name = "east"
region = "R2"
cooling = "liquid"
grid_power_cap_mw = 0.03
fiber_gbps = 10
heat_network = { base_mw = 0.2, heating_mw_per_kelvin = 0.01 }
[[sites.halls]]
name = "e"
[[sites.halls.racks]]
count = 1
nodes_per_rack = 3
node_type = "a"
"#;

fn jobs(n: u32) -> Vec<Workload> {
    (0..n)
        .map(|i| {
            let gpus = [1, 2, 4, 8][(i % 4) as usize];
            let mut w = Workload::gpu_job(
                i,
                SimTime::from_secs(u64::from(i) * 600),
                GpuRequest::whole_gpus(gpus, 8),
                Some(SimDuration::from_secs(1800 + u64::from(i * 37 % 7) * 900)),
            );
            w.tenant = TenantId(i % 5);
            if i % 11 == 0 {
                w.models = model::ModelFilter::parse_list("A100");
            }
            w
        })
        .collect()
}

fn needs(workloads: &[Workload]) -> Vec<JobNeeds> {
    workloads
        .iter()
        .map(|w| JobNeeds {
            gpus: w.gpu.total_gpus(),
            // Tenant 1 is bound to site south, tenant 2 to region R1 (north alone).
            site: (w.tenant.0 == 1).then(|| "south".to_string()),
            region: (w.tenant.0 == 2).then(|| "R1".to_string()),
            dataset: Some(Dataset { site: "south".into(), bytes: 50_000_000_000 }),
        })
        .collect()
}

fn sites() -> Vec<SiteRun> {
    let fleet = parse_fleet(FLEET).unwrap();
    (0..fleet.sites.len())
        .map(|s| {
            let site_fleet = fleet.site_fleet(SiteId(s as u32));
            let env = &site_fleet.sites[0].env;
            let power = PowerOptions {
                model: EnergyModel::new(&site_fleet, None, &HeatOptions::default()),
                temperature: TemperatureYear::valence().unwrap(),
                grid: GridYear::france().unwrap().with_price_adder(env.price_adder_eur_per_mwh),
                start_hour: 0,
                cap_watts: site_fleet.sites[0].grid_power_cap_watts.map(|c| vec![c]),
                mode: PowerMode::Admission,
                price_cap: None,
            };
            SiteRun {
                fleet: Arc::new(site_fleet),
                policy: sched::policy_by_name("drome", 7).unwrap(),
                config: SimConfig { power: Some(Arc::new(power)), seed: 7, ..SimConfig::default() },
            }
        })
        .collect()
}

fn run(dispatch: DispatchPolicy, workloads: &[Workload]) -> FederationReport {
    let config = FederationConfig { dispatch, ..FederationConfig::default() };
    simulate_federation(sites(), workloads, &needs(workloads), &config, &mut |_| {}).unwrap()
}

#[test]
fn every_job_runs_once_where_its_constraints_allow() {
    let workloads = jobs(400);
    for dispatch in DispatchPolicy::ALL {
        let r = run(dispatch, &workloads);
        assert_eq!(r.jobs, 400);
        let sent: u64 = r.sites.iter().map(|s| s.jobs_sent).sum();
        assert_eq!(sent + r.refused, r.jobs, "{dispatch}: every job is sent once or refused");
        let mut seen = vec![0u32; workloads.len()];
        for site in &r.sites {
            for rec in &site.report.records {
                seen[rec.id.0 as usize] += 1;
                let w = &workloads[rec.id.0 as usize];
                if w.tenant.0 == 1 {
                    assert_eq!(site.site, "south", "{dispatch}: a job bound to south left it");
                }
                if w.tenant.0 == 2 {
                    assert_eq!(site.site, "north", "{dispatch}: a job bound to R1 left it");
                }
                if !w.models.is_any() {
                    assert_eq!(site.site, "east", "{dispatch}: an A100 job went to a site without A100s");
                }
                assert!(rec.finish_s.is_some(), "{dispatch}: job {} did not finish", rec.id.0);
            }
        }
        // Bound tenants' A100 jobs can run nowhere: only east has A100s.
        let impossible = workloads.iter().filter(|w| w.tenant.0 == 1 && !w.models.is_any()).count() as u64;
        let impossible_too = workloads.iter().filter(|w| w.tenant.0 == 2 && !w.models.is_any()).count() as u64;
        assert_eq!(r.refused, impossible + impossible_too, "{dispatch}");
        assert!(seen.iter().all(|&n| n <= 1), "{dispatch}: a job ran at two sites");
        assert_eq!(r.cap_violations, 0, "{dispatch}: a site went over its grid cap");
        assert_eq!(r.completed + r.refused, r.jobs, "{dispatch}");
    }
}

#[test]
fn the_same_inputs_give_the_same_federation() {
    let workloads = jobs(200);
    let a = format!("{:?}", run(DispatchPolicy::Heat, &workloads));
    let b = format!("{:?}", run(DispatchPolicy::Heat, &workloads));
    assert_eq!(a, b);
}

#[test]
fn each_policy_moves_work_its_way() {
    let workloads = jobs(400);
    let by_site = |r: &FederationReport, name: &str| r.sites.iter().find(|s| s.site == name).unwrap().jobs_sent;
    let capacity = run(DispatchPolicy::Capacity, &workloads);
    let price = run(DispatchPolicy::PriceCarbon, &workloads);
    let heat = run(DispatchPolicy::Heat, &workloads);
    let data = run(DispatchPolicy::Data, &workloads);
    // South's power is 20 EUR/MWh cheaper: price-carbon sends it more than capacity does.
    assert!(
        by_site(&price, "south") > by_site(&capacity, "south"),
        "{} vs {}",
        by_site(&price, "south"),
        by_site(&capacity, "south")
    );
    // East's network wants heat and the others' hardly any: heat-aware sells more.
    assert!(
        heat.heat_exported_mwh > capacity.heat_exported_mwh,
        "{} vs {}",
        heat.heat_exported_mwh,
        capacity.heat_exported_mwh
    );
    // Every dataset lives at south: data-aware moves less of it.
    assert!(data.moved_tb < capacity.moved_tb, "{} vs {}", data.moved_tb, capacity.moved_tb);
    assert!(data.reasons.get("near-data").copied().unwrap_or(0) > 0);
}
