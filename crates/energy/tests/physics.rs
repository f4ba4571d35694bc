//! Physically sensible behaviour of the power, facility and heat models.

use energy::facility::chiller_cop;
use energy::gpu_power::family_throughput_at_cap;
use energy::heat::{HeatNetwork, export_heat};
use energy::it_power::{FleetPower, wall_factor};
use energy::{EnergyModel, GridYear, HeatOptions, TemperatureYear, account, heat_pump_cop};
use model::{Cooling, Fleet, GpuFamily, SiteId};

fn fleet(name: &str) -> Fleet {
    let path = format!("{}/../../fleets/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    model::fleet_toml::parse_fleet(&text).unwrap()
}

const COOLINGS: [Cooling; 3] = [Cooling::Air, Cooling::Liquid, Cooling::Immersion];

fn year_report(f: &Fleet, cooling: Cooling, allocation: f64, temperature: &TemperatureYear) -> energy::EnergyReport {
    let model = EnergyModel::new(f, Some(cooling), &HeatOptions::default());
    let grid = GridYear::france().unwrap();
    account(&model, temperature, &grid, &[(0.0, allocation), (8760.0 * 3600.0, allocation)], 0).unwrap()
}

#[test]
fn pue_orders_immersion_liquid_air_and_exceeds_one() {
    let f = fleet("valence");
    let temp = TemperatureYear::valence().unwrap();
    let pue: Vec<f64> = COOLINGS.iter().map(|&c| year_report(&f, c, 0.8, &temp).totals.pue).collect();
    assert!(pue.iter().all(|&p| p > 1.0), "{pue:?}");
    assert!(pue[2] < pue[1] && pue[1] < pue[0], "immersion < liquid < air: {pue:?}");
    assert!((1.02..1.12).contains(&pue[2]), "immersion {pue:?}");
    assert!((1.15..1.6).contains(&pue[0]), "air {pue:?}");
    // At every temperature and load, not just over the year.
    let model: Vec<EnergyModel> =
        COOLINGS.iter().map(|&c| EnergyModel::new(&f, Some(c), &HeatOptions::default())).collect();
    for t in [-5.0, 5.0, 15.0, 25.0, 35.0] {
        for a in [0.1, 0.5, 1.0] {
            let p: Vec<f64> = model
                .iter()
                .map(|m| {
                    let s = m.site_power(SiteId(0), a, t);
                    s.total_watts / s.it_watts
                })
                .collect();
            assert!(p[2] < p[1] && p[1] < p[0] && p[2] > 1.0, "at {t} °C, allocation {a}: {p:?}");
        }
    }
}

#[test]
fn facility_energy_covers_it_energy_and_site_covers_facility() {
    let f = fleet("small");
    let temp = TemperatureYear::valence().unwrap();
    for c in COOLINGS {
        let r = year_report(&f, c, 0.6, &temp);
        let t = &r.totals;
        assert!(t.facility_mwh >= t.it_mwh && t.site_mwh >= t.facility_mwh, "{c}: {t:?}");
        assert!((t.site_mwh - t.facility_mwh - t.heat_pump_mwh).abs() < 1e-6);
        assert!((r.hours - 8760.0).abs() < 1e-9);
        assert!(t.co2_t > 0.0 && t.energy_cost_eur > 0.0);
    }
}

#[test]
fn air_pue_is_higher_in_summer_than_winter() {
    let f = fleet("valence");
    let temp = TemperatureYear::valence().unwrap();
    let r = year_report(&f, Cooling::Air, 0.8, &temp);
    let pue_of_month = |m: usize| {
        let hours: Vec<_> = r.hourly.iter().filter(|h| energy::climate::month_of_hour(h.hour_of_year) == m).collect();
        let it: f64 = hours.iter().map(|h| h.it_mw).sum();
        let site: f64 = hours.iter().map(|h| h.site_mw).sum();
        (site, it)
    };
    // Site power includes the heat pump; compare the facility side directly instead.
    let model = EnergyModel::new(&f, Some(Cooling::Air), &HeatOptions::default());
    let pue_at = |t: f64| {
        let s = model.site_power(SiteId(0), 0.8, t);
        s.total_watts / s.it_watts
    };
    let means = temp.monthly_means();
    assert!(pue_at(means[6]) > pue_at(means[0]) + 0.05, "July {} vs January {}", pue_at(means[6]), pue_at(means[0]));
    let (july_site, july_it) = pue_of_month(6);
    let (jan_site, jan_it) = pue_of_month(0);
    assert!(july_site / july_it > 1.0 && jan_site / jan_it > 1.0);
    // Over the hourly account too: summer facility overhead above winter's.
    let hot = year_report(&f, Cooling::Air, 0.8, &TemperatureYear::constant(28.0)).totals.pue;
    let cold = year_report(&f, Cooling::Air, 0.8, &TemperatureYear::constant(2.0)).totals.pue;
    assert!(hot > cold + 0.1, "hot {hot} cold {cold}");
}

#[test]
fn heat_export_stays_within_demand_and_recoverable_heat() {
    let f = fleet("valence");
    let temp = TemperatureYear::valence().unwrap();
    for c in COOLINGS {
        let r = year_report(&f, c, 0.8, &temp);
        let t = &r.totals;
        assert!(t.heat_exported_mwh <= t.heat_demand_mwh + 1e-6, "{c}: {t:?}");
        assert!(t.heat_recovered_mwh <= t.heat_recoverable_mwh + 1e-6, "{c}: {t:?}");
        assert!(t.heat_exported_mwh <= t.heat_recovered_mwh + t.heat_pump_mwh + 1e-6, "{c}");
        assert!(t.heat_exported_mwh > 0.0 && t.heat_revenue_eur > 0.0, "{c}");
        assert!((t.heat_revenue_eur - 40.0 * t.heat_exported_mwh).abs() < 1e-3 * t.heat_revenue_eur);
        for h in &r.hourly {
            assert!(h.heat_exported_mw <= h.heat_demand_mw + 1e-9, "{c} hour {}", h.hour_of_year);
            if let Some(cap) = h.grid_cap_mw {
                // The heat pump never pushes the site over its grid connection.
                assert!(h.site_mw <= cap + 1e-9 || h.heat_exported_mw == 0.0, "{c} hour {}", h.hour_of_year);
            }
        }
    }
    let net = HeatNetwork::sized_for(1e6);
    let h = export_heat(1e5, 45.0, &net, 1e7, f64::INFINITY);
    assert!(h.recovered_watts <= 1e5 + 1e-6 && h.exported_watts > h.recovered_watts);
    let h = export_heat(1e7, 45.0, &net, 2e5, f64::INFINITY);
    assert!((h.exported_watts - 2e5).abs() < 1e-6);
    let h = export_heat(1e7, 45.0, &net, 2e5, 0.0);
    assert_eq!(h.exported_watts, 0.0, "no grid headroom, no heat pump");
}

#[test]
fn heat_pump_cop_falls_as_lift_grows_and_chillers_with_heat() {
    let supply = 65.0;
    let cops: Vec<f64> = [55.0, 45.0, 35.0, 25.0].iter().map(|&s| heat_pump_cop(s, supply).unwrap()).collect();
    assert!(cops.windows(2).all(|w| w[0] > w[1]), "{cops:?}");
    assert!((3.0..7.0).contains(&cops[1]), "oil at 45 °C to 65 °C: {cops:?}");
    assert_eq!(heat_pump_cop(75.0, 65.0), None, "hot enough for a plate exchanger");
    assert!(chiller_cop(15.0, 10.0) > chiller_cop(15.0, 30.0));
}

#[test]
fn full_allocation_power_is_board_power_plus_overhead() {
    let f = fleet("valence");
    let fp = FleetPower::new(&f);
    let board = f.gpu_board_power_watts();
    let site = fp.sites[0];
    assert_eq!(site.gpu_board_watts, board);
    // Worst case: every GPU at its board limit plus the host (CPUs, memory, NICs, NVSwitch, ~1.6
    // kW per HGX node), at the wall.
    let it_max = fp.site_it_max_watts(SiteId(0), Cooling::Immersion);
    let host_per_node = (site.max_watts - board) / f.nodes.len() as f64;
    assert!((1200.0..2200.0).contains(&host_per_node), "host {host_per_node} W");
    assert!((it_max - site.max_watts * wall_factor(Cooling::Immersion)).abs() < 1e-6);
    // Air: the HGX node at ~8.4 kW (measured peak of an 8x H100 node rated 10.2 kW).
    let node_air = fp.node_max_watts(model::NodeId(0), Cooling::Air);
    assert!((8000.0..9000.0).contains(&node_air), "{node_air}");
    // Typical training draw: ~60-75% of the 10.2 kW nameplate.
    let node_busy = fp.node_watts(model::NodeId(0), Cooling::Air, 8.0);
    assert!((0.6..0.75).contains(&(node_busy / 10_200.0)), "{node_busy}");
    // Site: the worst case in oil (~4.5 MW: 2.87 MW of GPU boards, ~0.8 MW of hosts, power supplies
    // and ~7% of facility) fits the 6 MW connection; the model is linear in allocation.
    let m = EnergyModel::new(&f, None, &HeatOptions::default());
    let worst = m.site_worst_case_watts(SiteId(0), 35.0);
    assert!(worst > m.site_power_watts(SiteId(0), 1.0, 35.0));
    assert!((4.0e6..6.0e6).contains(&worst), "{worst}");
    let mid = m.site_power_watts(SiteId(0), 0.5, 20.0);
    let ends = (m.site_power_watts(SiteId(0), 0.0, 20.0) + m.site_power_watts(SiteId(0), 1.0, 20.0)) / 2.0;
    assert!((mid - ends).abs() < 1e-6 * mid);
    assert!(m.site_watts_per_gpu(SiteId(0), 20.0) > 500.0);
    let free = energy::site_power_watts(&f, Cooling::Immersion, 1.0, 20.0);
    assert!((free - m.site_power_watts(SiteId(0), 1.0, 20.0)).abs() < 1e-6);
    assert!(energy::worst_case_site_power_watts(&f, Cooling::Air, 35.0) > worst);
}

#[test]
fn power_capping_costs_a_few_percent() {
    for family in [GpuFamily::H100, GpuFamily::H200, GpuFamily::A100] {
        let at80 = family_throughput_at_cap(family, 0.8);
        let at70 = family_throughput_at_cap(family, 0.7);
        assert!((0.93..0.99).contains(&at80) && (0.9..at80).contains(&at70), "{family}: {at80} {at70}");
        assert_eq!(family_throughput_at_cap(family, 1.0), 1.0);
    }
    let p = energy::GpuPowerProfile::of(GpuFamily::H200);
    assert_eq!(energy::throughput_at_cap(&p, 0.8, 0.75), 1.0, "a cap above the draw costs nothing");
}

#[test]
fn series_hours_follow_the_step_function() {
    let f = fleet("small");
    let model = EnergyModel::new(&f, None, &HeatOptions::default());
    let temp = TemperatureYear::constant(10.0);
    let grid = GridYear::constant(50.0, 20.0);
    // Full for 30 min, empty for 60 min, full for 30 min: two hours at 50%.
    let series = [(100.0, 1.0), (1900.0, 0.0), (5500.0, 1.0), (7300.0, 1.0)];
    let r = account(&model, &temp, &grid, &series, 100).unwrap();
    assert_eq!(r.hourly.len(), 2);
    assert!((r.mean_allocation - 0.5).abs() < 1e-12);
    assert!(r.hourly.iter().all(|h| (h.allocation - 0.5).abs() < 1e-12));
    assert_eq!(r.hourly[1].hour_of_year, 101);
    assert_eq!(r.cooling, "per-site");
    assert!(account(&model, &temp, &grid, &[(0.0, 0.5)], 0).is_err());
    assert!(account(&model, &temp, &grid, &[(10.0, 0.5), (5.0, 0.5)], 0).is_err());
    assert!(account(&model, &temp, &grid, &[(0.0, 1.5), (5.0, 0.5)], 0).is_err());
}
