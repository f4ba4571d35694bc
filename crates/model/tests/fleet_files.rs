//! The fleet files shipped in `fleets/` parse and describe what their comments say: a change to a
//! file (or to the format) that silently alters GPU counts, caps or topology fails here.

use model::fleet_toml::parse_fleet;
use model::{Cooling, Fleet, GpuFamily};
use std::collections::BTreeSet;

fn load(name: &str) -> Fleet {
    let path = format!("{}/../../fleets/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_fleet(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[test]
fn valence_is_4096_h200_in_immersion() {
    let f = load("valence.toml");
    assert_eq!(f.name, "valence");
    assert_eq!(f.nodes.len(), 512);
    assert_eq!(f.total_gpus(), 4096);
    assert_eq!(f.max_gpus_per_node(), 8);
    assert!(f.nodes.iter().all(|n| n.gpu_count == 8));

    assert_eq!(f.gpu_models.len(), 1);
    let h200 = &f.gpu_models[0];
    assert_eq!(h200.family, GpuFamily::H200);
    assert_eq!(h200.memory_mib, 141 * 1024);
    assert_eq!(h200.board_power_watts, 700.0);
    assert!(approx(f.gpu_board_power_watts(), 4096.0 * 700.0));

    assert_eq!(f.total_cpu_milli(), 512 * 224_000);
    assert_eq!(f.total_memory_mib(), 512 * 2 * 1024 * 1024);

    assert_eq!(f.sites.len(), 1);
    let site = &f.sites[0];
    assert_eq!(site.cooling, Cooling::Immersion);
    assert_eq!(site.grid_power_cap_watts, Some(6.0e6));
    // The cap covers the nodes' 10.2 kW nameplate at an immersion PUE of 1.08.
    let it_nameplate = 512.0 * 10.2e3;
    assert!(it_nameplate * 1.08 < 6.0e6 && 6.0e6 < it_nameplate * 1.2);
}

#[test]
fn valence_topology_is_four_halls_of_rail_groups() {
    let f = load("valence.toml");
    let names: Vec<&str> = f.halls.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["hall-a", "hall-b", "hall-c", "hall-d"]);
    assert_eq!(f.spines, 4, "one spine per hall");
    for hall in &f.halls {
        assert_eq!(hall.racks.len(), 32);
        assert_eq!(hall.cooling_capacity_watts, Some(1.4e6));
        let hall_nodes: usize = hall.racks.iter().map(|r| f.racks[r.index()].nodes.len()).sum();
        assert!(hall_nodes as f64 * 10.2e3 < 1.4e6, "a hall's nameplate fits its cooling loop");
    }
    assert_eq!(f.racks.len(), 128);
    for rack in &f.racks {
        assert_eq!(rack.nodes.len(), 4);
        assert_eq!(rack.power_limit_watts, Some(50.0e3));
    }

    // 8 tanks (32 nodes, one scalable unit) per leaf group: 16 groups, never spanning halls.
    assert_eq!(f.leaf_switches, 16);
    for leaf in 0..f.leaf_switches {
        let members: Vec<_> = f.nodes.iter().filter(|n| n.leaf_switch == leaf).collect();
        assert_eq!(members.len(), 32, "leaf {leaf}");
        let halls: BTreeSet<_> = members.iter().map(|n| n.hall).collect();
        assert_eq!(halls.len(), 1, "leaf {leaf} spans halls");
    }
    assert_eq!(f.nodes[0].leaf_switch, f.nodes[31].leaf_switch);
    assert_ne!(f.nodes[31].leaf_switch, f.nodes[32].leaf_switch);

    // HGX boards: each node is its own NVLink domain.
    let domains: BTreeSet<u32> = f.nodes.iter().map(|n| n.nvlink_domain).collect();
    assert_eq!(domains.len(), 512);
    assert_eq!(f.nodes[0].name, "hall-a-r001-n01");
    assert_eq!(f.nodes[511].name, "hall-d-r032-n04");
}

#[test]
fn small_mixes_models_and_cooling() {
    let f = load("small.toml");
    assert_eq!(f.name, "small");
    assert_eq!(f.nodes.len(), 8);
    assert_eq!(f.total_gpus(), 48);

    let by_family: Vec<(GpuFamily, u64)> =
        f.gpus_by_model().into_iter().map(|(id, n)| (f.gpu_model(id).family, n)).collect();
    assert_eq!(by_family.len(), 2);
    assert!(by_family.contains(&(GpuFamily::H200, 32)));
    assert!(by_family.contains(&(GpuFamily::A100, 16)));
    let a100 = f.gpu_model(f.gpu_model_id("A100-SXM4-80GB").expect("A100 model"));
    assert_eq!(a100.memory_mib, 80 * 1024);
    assert_eq!(a100.board_power_watts, 400.0);

    let cpu_only: Vec<&str> = f.nodes.iter().filter(|n| n.gpu_count == 0).map(|n| n.name.as_str()).collect();
    assert_eq!(cpu_only, ["hall-b-r001-n01", "hall-c-r002-n01"]);
    assert!(f.nodes.iter().filter(|n| n.gpu_count == 0).all(|n| n.gpu_model.is_none() && n.cpu_milli == 128_000));

    let sites: Vec<(&str, Cooling, Option<f64>)> =
        f.sites.iter().map(|s| (s.name.as_str(), s.cooling, s.grid_power_cap_watts)).collect();
    assert_eq!(sites, [("lab-oil", Cooling::Immersion, Some(45e3)), ("lab-air", Cooling::Air, Some(20e3))]);
    assert_eq!(f.sites[0].halls.len(), 2);
    assert_eq!(f.sites[1].halls.len(), 1);
}

#[test]
fn small_topology() {
    let f = load("small.toml");
    let halls: Vec<(&str, Option<f64>)> = f.halls.iter().map(|h| (h.name.as_str(), h.cooling_capacity_watts)).collect();
    assert_eq!(halls, [("hall-a", Some(40e3)), ("hall-b", None), ("hall-c", Some(15e3))]);
    assert_eq!(f.spines, 3);
    assert_eq!(f.racks.len(), 5);
    // hall-a's two racks share a leaf; every other rack has its own.
    assert_eq!(f.leaf_switches, 4);
    let hall_a: Vec<_> = f.nodes.iter().filter(|n| n.hall == f.nodes[0].hall).collect();
    assert_eq!(hall_a.len(), 4);
    assert!(hall_a.iter().all(|n| n.leaf_switch == hall_a[0].leaf_switch));
    assert_eq!(f.racks[0].power_limit_watts, Some(25e3));
    assert_eq!(f.racks[2].power_limit_watts, None);
    // Cooling in hall-a binds before the H200s reach their 10.2 kW nameplate.
    assert!(4.0 * 10.2e3 > f.halls[0].cooling_capacity_watts.unwrap_or(f64::INFINITY));
    // Nodes of different sites never share a leaf.
    let oil: BTreeSet<u32> = f.nodes.iter().filter(|n| n.site.0 == 0).map(|n| n.leaf_switch).collect();
    let air: BTreeSet<u32> = f.nodes.iter().filter(|n| n.site.0 == 1).map(|n| n.leaf_switch).collect();
    assert!(oil.is_disjoint(&air));
}
