//! Power-capped runs: no site ever draws more than its grid cap, whatever the trace, fleet,
//! policy, cooling or mode.

use energy::{EnergyModel, GridYear, HeatOptions, TemperatureYear};
use model::{Cooling, Fleet, GpuRequest, SimDuration, SimTime, Workload};
use proptest::prelude::*;
use sched::policy_by_name;
use sched::power::{CapShare, PowerMode};
use sim::{PowerOptions, SimConfig, SimReport, simulate};
use std::sync::Arc;

mod common;

fn fleet(nodes: u32, gpus: u8, model: &str) -> Arc<Fleet> {
    common::fleet(nodes, gpus, model, Cooling::Air, None)
}

fn options(fleet: &Fleet, cooling: Cooling, frac: Option<f64>, mode: PowerMode) -> Arc<PowerOptions> {
    let mut o = PowerOptions {
        model: EnergyModel::new(fleet, Some(cooling), &HeatOptions::default()),
        temperature: TemperatureYear::valence().unwrap_or_else(|_| TemperatureYear::constant(15.0)),
        grid: GridYear::france().unwrap_or_else(|_| GridYear::constant(60.0, 30.0)),
        start_hour: 4000,
        cap_watts: None,
        mode,
        price_cap: None,
    };
    o.cap_watts = frac.map(|f| o.nameplate_watts().iter().map(|w| w * f).collect());
    Arc::new(o)
}

fn run(fleet: Arc<Fleet>, jobs: &[Workload], policy: &str, power: Arc<PowerOptions>) -> SimReport {
    let mut p = policy_by_name(policy, 1).unwrap();
    let config = SimConfig { power: Some(power), ..SimConfig::default() };
    simulate(fleet, jobs, p.as_mut(), &config, &mut |_| {}).unwrap()
}

fn jobs(spec: &[(u64, u32, u64)]) -> Vec<Workload> {
    let mut v: Vec<Workload> = spec
        .iter()
        .enumerate()
        .map(|(i, &(t, g, d))| {
            Workload::gpu_job(
                i as u32,
                SimTime::from_secs(t),
                GpuRequest::whole_gpus(g, 8),
                Some(SimDuration::from_secs(d)),
            )
        })
        .collect();
    v.sort_by_key(|w| w.id);
    v
}

#[test]
fn uncapped_run_measures_energy_and_keeps_its_schedule() {
    let f = fleet(4, 8, "H200");
    let js = jobs(&[(0, 8, 3600), (10, 16, 7200), (20, 4, 1800), (30, 8, 3600)]);
    let mut p = policy_by_name("fifo", 1).unwrap();
    let plain = simulate(f.clone(), &js, p.as_mut(), &SimConfig::default(), &mut |_| {}).unwrap();
    let r = run(f, &js, "fifo", options(&fleet(4, 8, "H200"), Cooling::Air, None, PowerMode::Admission));
    assert_eq!(plain.mean_jct_s, r.mean_jct_s);
    let e = r.power.unwrap();
    assert!(e.it_mwh > 0.0 && e.facility_mwh > e.it_mwh && e.pue > 1.0);
    assert_eq!(e.cap_violations, 0);
    assert!(e.power_cap_mw.is_none());
}

#[test]
fn a_tight_cap_delays_work_and_dynamic_caps_admit_more() {
    let f = fleet(4, 8, "H200");
    let js = jobs(&[(0, 8, 3600), (0, 8, 3600), (0, 8, 3600), (0, 8, 3600)]);
    let free = run(f.clone(), &js, "fifo", options(&f, Cooling::Air, None, PowerMode::Admission));
    let adm = run(f.clone(), &js, "fifo", options(&f, Cooling::Air, Some(0.8), PowerMode::Admission));
    let dynm = run(
        f.clone(),
        &js,
        "fifo",
        options(
            &f,
            Cooling::Air,
            Some(0.8),
            PowerMode::Dynamic { min_cap: 0.6, share: CapShare::Even, cap_hosts: false },
        ),
    );
    assert!(adm.mean_jct_s > free.mean_jct_s, "{} vs {}", adm.mean_jct_s, free.mean_jct_s);
    assert!(dynm.mean_jct_s < adm.mean_jct_s, "{} vs {}", dynm.mean_jct_s, adm.mean_jct_s);
    for r in [&free, &adm, &dynm] {
        assert_eq!(r.completed, 4);
        assert_eq!(r.power.as_ref().unwrap().cap_violations, 0);
    }
    assert!(dynm.power.as_ref().unwrap().mean_gpu_cap < 1.0);
}

#[test]
fn dynamic_caps_follow_the_weather_and_admission_holds_to_the_hottest_hour() {
    // Air cooling (whose overhead grows most with heat), a cap tight enough that a full fleet
    // runs capped: in a year of 5 °C with one 40 °C hour, caps sit higher than in a year of
    // 40 °C throughout, every hour fits, and admission (bound to the hottest hour) is the same.
    let f = fleet(4, 8, "H200");
    let js = jobs(&[(0, 8, 36_000), (0, 8, 36_000), (0, 8, 36_000), (0, 8, 36_000)]);
    let mode = PowerMode::Dynamic { min_cap: 0.5, share: CapShare::Even, cap_hosts: false };
    let with_year = |year: TemperatureYear| {
        let mut o = (*options(&f, Cooling::Air, Some(0.75), mode)).clone();
        o.temperature = year;
        o.start_hour = 0;
        run(f.clone(), &js, "fifo", Arc::new(o))
    };
    let mut csv = String::from("hour,outdoor_celsius\n");
    for h in 0..energy::HOURS_PER_YEAR {
        csv += &format!("{h},{}\n", if h == 3 { 40.0 } else { 5.0 });
    }
    let mild = with_year(TemperatureYear::parse(&csv).unwrap());
    let hot = with_year(TemperatureYear::constant(40.0));
    for r in [&mild, &hot] {
        assert_eq!(r.completed, 4);
        assert_eq!(r.power.as_ref().unwrap().cap_violations, 0);
        assert_eq!(r.power.as_ref().unwrap().refused_starts, hot.power.as_ref().unwrap().refused_starts);
    }
    let (m, h) = (mild.power.as_ref().unwrap().mean_gpu_cap, hot.power.as_ref().unwrap().mean_gpu_cap);
    assert!(h < 1.0 && m > h, "mild {m} vs hot {h}");
    assert!(mild.mean_jct_s <= hot.mean_jct_s);
}

#[test]
fn a_dynamic_cap_that_never_binds_keeps_the_uncapped_schedule() {
    // Hours of work, so the caps are re-set at many hour boundaries: those re-sets must not give
    // the policy extra rounds that change its decisions.
    let f = fleet(2, 8, "H200");
    let spec: Vec<(u64, u32, u64)> =
        (0..40).map(|i| (i * 1500, 1 + (i % 8) as u32, 3600 + (i * 7919) % 20_000)).collect();
    let js = jobs(&spec);
    let mode = PowerMode::Dynamic { min_cap: 0.5, share: CapShare::Even, cap_hosts: false };
    for policy in ["fifo", "drome"] {
        let free = run(f.clone(), &js, policy, options(&f, Cooling::Air, None, PowerMode::Admission));
        let wide = run(f.clone(), &js, policy, options(&f, Cooling::Air, Some(3.0), mode));
        assert_eq!(free.mean_jct_s, wide.mean_jct_s, "{policy}");
        assert_eq!(free.events, wide.events, "{policy}");
    }
}

#[test]
fn each_site_is_accounted_at_its_own_load() {
    // Two sites: immersion ("busy") then air ("idle"), two 8-GPU H200 nodes each. Two 8-GPU jobs
    // for 10 h fill the first site (first fit) and leave the second idle: IT energy is the busy
    // site at full allocation plus the idle one at none, each at its own wall factor, not both
    // at half.
    let mut b = model::FleetBuilder::new("two");
    for (name, cooling) in [("busy", Cooling::Immersion), ("idle", Cooling::Air)] {
        let site = b.add_site(name, cooling, None);
        let hall = b.add_hall(site, name, None);
        let rack = b.add_rack(hall, name, None);
        for i in 0..2 {
            b.add_node(
                rack,
                model::NodeSpec {
                    name: format!("{name}-{i}"),
                    cpu_milli: 32_000,
                    memory_mib: 65_536,
                    gpu_count: 8,
                    gpu_model: Some("H200".into()),
                    nvlink_domain: None,
                    leaf_switch: None,
                },
            );
        }
    }
    let f = Arc::new(b.build());
    let js = jobs(&[(0, 8, 36_000), (0, 8, 36_000)]);
    let o = PowerOptions {
        model: EnergyModel::new(&f, None, &HeatOptions::default()),
        temperature: TemperatureYear::constant(15.0),
        grid: GridYear::constant(60.0, 30.0),
        start_hour: 0,
        cap_watts: None,
        mode: PowerMode::Admission,
        price_cap: None,
    };
    let r = run(f.clone(), &js, "fifo", Arc::new(o.clone()));
    let it = |site: u32, a: f64| o.model.site_power(model::SiteId(site), a, 15.0).it_watts;
    let want_mwh = 10.0 * (it(0, 1.0) + it(1, 0.0)) / 1e6;
    let half_mwh = 10.0 * (it(0, 0.5) + it(1, 0.5)) / 1e6;
    let got = r.power.as_ref().unwrap().it_mwh;
    assert!((got - want_mwh).abs() < 1e-9 * want_mwh.max(1.0), "{got} vs {want_mwh}");
    assert!((half_mwh - want_mwh).abs() > 1e-4, "the test cannot tell the two apart");
    let sites = &r.power.as_ref().unwrap().site_energy;
    assert_eq!(sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["busy", "idle"]);
    assert!((sites[1].totals.it_mwh - 10.0 * it(1, 0.0) / 1e6).abs() < 1e-9);
}

#[test]
fn price_caps_cut_energy_in_dear_hours_only() {
    // A flat 60 EUR/MWh year: a cap above 50 binds every hour, one above 70 never does.
    let f = fleet(2, 8, "H200");
    let spec: Vec<(u64, u32, u64)> = (0..20).map(|i| (i * 1800, 8, 7200 + (i * 3571) % 10_000)).collect();
    let js = jobs(&spec);
    let with = |price_cap: Option<sim::PriceCap>| {
        let mut o = (*options(&f, Cooling::Air, None, PowerMode::Admission)).clone();
        o.grid = GridYear::constant(60.0, 30.0);
        o.price_cap = price_cap;
        run(f.clone(), &js, "fifo", Arc::new(o))
    };
    let free = with(None);
    let never = with(Some(sim::PriceCap { above_eur_per_mwh: 70.0, gpu_cap: 0.6 }));
    let always = with(Some(sim::PriceCap { above_eur_per_mwh: 50.0, gpu_cap: 0.6 }));
    assert_eq!(never.mean_jct_s, free.mean_jct_s);
    assert_eq!(never.power.as_ref().unwrap().it_mwh, free.power.as_ref().unwrap().it_mwh);
    let (e_free, e_cap) = (free.power.as_ref().unwrap(), always.power.as_ref().unwrap());
    assert!(e_cap.it_mwh < e_free.it_mwh, "{} vs {}", e_cap.it_mwh, e_free.it_mwh);
    assert!(e_cap.energy_cost_eur < e_free.energy_cost_eur);
    assert!(always.mean_jct_s > free.mean_jct_s, "capped GPUs run slower");
    assert!((e_cap.mean_gpu_cap - 0.6).abs() < 1e-9, "{}", e_cap.mean_gpu_cap);
    assert_eq!(always.completed, js.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn no_run_ever_exceeds_its_cap(
        nodes in 1u32..6,
        gpus in prop::sample::select(vec![4u8, 8]),
        model in prop::sample::select(vec!["H200", "A100", "V100", "T4"]),
        spec in prop::collection::vec((0u64..20_000, 1u32..17, 60u64..20_000), 1..40),
        // Down to caps below the idle draw of a small fleet: those must be refused, not run.
        frac in 0.2f64..1.2,
        dynamic in any::<bool>(),
        min_cap in 0.3f64..1.0,
        share in prop::sample::select(vec![
            CapShare::Even,
            CapShare::OldestFirst,
            CapShare::WidestFirst,
            CapShare::LowestRankFirst,
        ]),
        cap_hosts in any::<bool>(),
        start_hour in 0usize..energy::HOURS_PER_YEAR,
        cooling in prop::sample::select(vec![Cooling::Air, Cooling::Liquid, Cooling::Immersion]),
        policy in prop::sample::select(vec!["fifo", "fifo-bestfit", "backfill", "tiresias", "drome"]),
    ) {
        let f = fleet(nodes, gpus, model);
        let js = jobs(&spec);
        let mode = if dynamic { PowerMode::Dynamic { min_cap, share, cap_hosts } } else { PowerMode::Admission };
        let mut opts = (*options(&f, cooling, Some(frac), mode)).clone();
        opts.start_hour = start_hour;
        let opts = Arc::new(opts);
        let budget = opts.budget(&f).unwrap();
        let mut p = policy_by_name(policy, 1).unwrap();
        let config = SimConfig { power: Some(opts), keep_records: true, ..SimConfig::default() };
        let result = simulate(f.clone(), &js, p.as_mut(), &config, &mut |_| {});
        if budget.sites[0].cap_watts < budget.sites[0].base_watts {
            let refused = matches!(result, Err(sim::SimError::CapBelowIdle { .. }));
            prop_assert!(refused, "a cap below idle draw was not refused");
            return Ok(());
        }
        let r = result.unwrap();
        // A start the cap could not carry must not strand its job: every job that fits the fleet
        // and the cap with nothing else running completes.
        let floor = if dynamic { min_cap } else { 1.0 };
        let per_gpu = budget.nodes[0].watts_per_gpu(floor);
        for rec in &r.records {
            let GpuRequest::Gang { nodes: n, gpus_per_node } = js[rec.id.0 as usize].gpu else { continue };
            let fits_fleet = n <= nodes && gpus_per_node <= u32::from(gpus);
            let fits_cap = budget.sites[0].base_watts + rec.gpus * per_gpu * 1.001 <= budget.sites[0].cap_watts;
            if fits_fleet && fits_cap {
                prop_assert!(rec.finish_s.is_some(), "job {:?} ({} GPUs) never finished", rec.id, rec.gpus);
            }
        }
        let e = r.power.unwrap();
        prop_assert_eq!(e.cap_violations, 0);
        prop_assert_eq!(e.worst_case_violations, 0);
        prop_assert!(e.peak_site_mw <= e.power_cap_mw.unwrap() * (1.0 + 1e-9) + 1e-12);
    }
}

/// Found by `no_run_ever_exceeds_its_cap`: one V100 node under a dynamic, even cap with host
/// capping, backfill, in the coldest hours of the year.
#[test]
fn dynamic_even_cap_on_one_small_node_holds() {
    let f = fleet(1, 4, "V100");
    let js = jobs(&[
        (0, 1, 60),
        (0, 1, 17617),
        (5440, 2, 12275),
        (4725, 1, 3998),
        (5440, 2, 2545),
        (1530, 3, 12640),
        (4882, 2, 13728),
        (4724, 4, 16664),
    ]);
    let mode = PowerMode::Dynamic { min_cap: 0.3697498093683627, share: CapShare::Even, cap_hosts: true };
    let mut opts = (*options(&f, Cooling::Liquid, Some(0.6584952934546684), mode)).clone();
    opts.start_hour = 8614;
    let r = run(f, &js, "backfill", Arc::new(opts));
    let e = r.power.unwrap();
    assert_eq!(e.cap_violations, 0);
    assert_eq!(e.worst_case_violations, 0);
}

#[test]
fn each_hour_of_energy_goes_to_the_tenants_that_drew_it() {
    // Tenant 0: 8 GPUs for two hours from 0. Tenant 1: 8 GPUs for the first hour, then 16 GPUs
    // in the fourth hour. The third hour nothing runs.
    let f = fleet(4, 8, "H200");
    let mut js = jobs(&[(0, 8, 7200), (0, 8, 3600), (3 * 3600, 16, 3600)]);
    js[1].tenant = model::TenantId(1);
    js[2].tenant = model::TenantId(1);
    let r = run(f.clone(), &js, "fifo", options(&f, Cooling::Air, None, PowerMode::Admission));
    let e = r.power.unwrap();
    let hour = |k: usize| e.hourly[k].it_mw * e.hourly[k].hours;
    assert_eq!(e.hourly.len(), 4, "{:?}", e.hourly);
    let t = |id: u32| e.tenant_energy.iter().find(|x| x.tenant == id).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-9);
    // Every GPU draws alike here: tenant 1 held 24 GPU-hours to tenant 0's 16, so 1.5 times its
    // energy; and both together are the run's IT energy less the idle draw of every hour (the
    // third hour's, all idle, four times).
    assert!(close(t(1).energy.it_mwh / t(0).energy.it_mwh, 1.5), "{} vs {}", t(1).energy.it_mwh, t(0).energy.it_mwh);
    let idle = hour(2);
    assert!(
        close(t(0).energy.it_mwh + t(1).energy.it_mwh, e.it_mwh - 4.0 * idle),
        "{} + {} vs {}",
        t(0).energy.it_mwh,
        t(1).energy.it_mwh,
        e.it_mwh
    );
    for x in [t(0), t(1)] {
        assert!(x.energy.facility_mwh > x.energy.it_mwh && x.energy.energy_cost_eur > 0.0 && x.energy.co2_t > 0.0);
        assert!(x.energy.heat_revenue_eur >= 0.0 && x.energy.heat_exported_mwh >= 0.0);
    }
    assert!(
        t(0).energy.co2_t + t(1).energy.co2_t < e.co2_t
            && t(0).energy.energy_cost_eur + t(1).energy.energy_cost_eur < e.energy_cost_eur
    );
    assert!(t(0).energy.heat_revenue_eur + t(1).energy.heat_revenue_eur <= e.heat_revenue_eur * (1.0 + 1e-9));
    assert_eq!(t(0).gpu_hours_by_model, vec![("H200".to_string(), 16.0, 0.0)]);
    assert_eq!(t(1).gpu_hours_by_model, vec![("H200".to_string(), 24.0, 0.0)]);
    // The same run twice gives the same shares, bit for bit.
    let again = run(f.clone(), &js, "fifo", options(&f, Cooling::Air, None, PowerMode::Admission));
    assert_eq!(again.power.unwrap().tenant_energy, e.tenant_energy);
}
