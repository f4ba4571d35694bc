//! Node lists as fleets: openb, headerless PAI and spot-GPU lists, and their errors.

use std::fs::File;
use trace::{NodeListFormat, NodeListOptions, TraceError, TraceErrorKind};

fn load_with(name: &str, format: Option<NodeListFormat>) -> Result<model::Fleet, TraceError> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/").to_string() + name;
    match File::open(&path) {
        Ok(file) => trace::read_node_list(file, name, format, &NodeListOptions::default()),
        Err(e) => panic!("{path}: {e}"),
    }
}

fn load(name: &str) -> Result<model::Fleet, TraceError> {
    load_with(name, None)
}

#[test]
fn openb_node_list_is_a_flat_fleet() {
    let f = load("openb_nodes_small.csv").unwrap();
    assert_eq!(f.name, "openb_nodes_small");
    assert_eq!((f.sites.len(), f.halls.len(), f.racks.len()), (1, 1, 1));
    assert_eq!(f.sites[0].cooling, model::Cooling::Air);
    assert_eq!(f.sites[0].grid_power_cap_watts, None);
    assert_eq!(f.nodes.len(), 3);
    assert_eq!(f.total_gpus(), 10);
    assert_eq!(f.nodes[0].gpu_model, None);
    assert_eq!(f.node_gpu_model(model::NodeId(1)).map(|m| m.name.as_str()), Some("V100M32"));
    assert_eq!((f.nodes[1].cpu_milli, f.nodes[1].memory_mib), (96_000, 786_432));
}

#[test]
fn headerless_pai_spec_is_told_by_its_name() {
    let f = load("pai_machine_spec.csv").unwrap();
    assert_eq!(f.nodes.len(), 4, "the first row is a machine, not a header");
    assert_eq!(f.total_gpus(), 18);
    assert_eq!(f.nodes[0].gpu_model, None, "gpu_type CPU");
    assert_eq!((f.nodes[1].cpu_milli, f.nodes[1].memory_mib), (64_000, 512 * 1024));
    let names: Vec<&str> = f.gpu_models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["P100", "V100M32", "MISC"]);
}

#[test]
fn spot_nodes_get_the_default_memory_per_cpu() {
    let f = load("spot_nodes_small.csv").unwrap();
    assert_eq!(f.nodes.len(), 3);
    assert_eq!(f.total_gpus(), 13);
    assert_eq!(f.nodes[0].memory_mib, 192 * 8 * 1024);
    assert_eq!(f.nodes[2].name, "3");
    let opts = NodeListOptions { nodes_per_rack: 1, spot_memory_mib_per_cpu: 1024 };
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spot_nodes_small.csv");
    let f = trace::load_node_list_with(path, Some(NodeListFormat::Spot), &opts).unwrap();
    assert_eq!(f.racks.len(), 3);
    assert_eq!(f.nodes[1].memory_mib, 128 * 1024);
}

#[test]
fn too_many_gpus_on_a_node_is_rejected() {
    let e = load("openb_nodes_bad_gpu.csv").unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"openb_nodes_bad_gpu.csv:3: column 4 'gpu': expected an integer at most 255, got "300""#
    );
}

#[test]
fn duplicate_node_names_are_rejected() {
    let e = load("openb_nodes_duplicate.csv").unwrap_err();
    assert_eq!(e.to_string(), r#"openb_nodes_duplicate.csv:3: duplicate node name "openb-node-0000""#);
}

#[test]
fn pai_columns_are_named_even_without_a_header() {
    let e = load("pai_machine_spec_bad.csv").unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"pai_machine_spec_bad.csv:3: column 4 'cap_mem': expected a non-negative number, got "-512""#
    );
}

#[test]
fn short_rows_are_rejected() {
    let e = load("spot_nodes_short_row.csv").unwrap_err();
    assert_eq!(e.to_string(), "spot_nodes_short_row.csv:3: expected 4 fields like the header, got 3");
}

#[test]
fn a_workload_trace_is_not_a_node_list() {
    let e = load("philly_small.csv").unwrap_err();
    assert!(matches!(e.kind, TraceErrorKind::UnknownFormat { .. }), "{e}");
    let e = load_with("philly_small.csv", Some(NodeListFormat::Openb)).unwrap_err();
    assert_eq!(e.to_string(), "philly_small.csv:1: missing column 'sn' (or 'name')");
}
