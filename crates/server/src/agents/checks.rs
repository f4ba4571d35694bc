//! Agents are input too: what a node says of itself (its GPUs, its address, its draw, the caps it
//! applies) is checked against the fleet and physical bounds before anything is believed. A
//! report that fails is refused with the field and the reason, and the node is marked with it
//! (`/v1/nodes` shows the problem) until a report passes; the power shown for the site then
//! falls back to the model's figure for the node's GPUs in use.

use model::{Fleet, NodeId};

/// The margin over the energy model's full draw a node's report may show: the model is an
/// estimate, a power supply's losses and a fan curve are not in it.
const POWER_MARGIN: f64 = 1.5;
/// The highest GPU power cap anyone asks for (the API's own limit for an admin's cap).
const MAX_GPU_CAP_WATTS: f64 = 5_000.0;
/// The largest GPU memory a node may declare, MiB (1 TiB: several times today's largest GPU).
const MAX_GPU_MEMORY_MIB: u64 = 1 << 20;
/// The longest node address and GPU model name taken.
const MAX_ADDRESS_LEN: usize = 256;
const MAX_MODEL_LEN: usize = 64;

/// What a node's reports may say, node by node, worked out once from the fleet.
#[derive(Debug)]
pub(crate) struct NodeBounds {
    /// Highest plausible draw, watts at the wall, by node index.
    max_watts: Vec<f64>,
    /// Highest plausible CPU package limit, watts, by node index.
    max_cpu_watts: Vec<f64>,
}

/// A refused report: the field at fault and why.
#[derive(Debug, PartialEq)]
pub(crate) struct Refusal {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { field, message: message.into() }
}

impl NodeBounds {
    pub(crate) fn new(fleet: &Fleet) -> NodeBounds {
        let (mut max_watts, mut max_cpu_watts) = (Vec::new(), Vec::new());
        for id in fleet.node_ids() {
            let p = energy::it_power::NodePower::of(fleet, id);
            let cooling = fleet.sites[fleet.node(id).site.index()].cooling;
            max_watts.push(p.max_watts * energy::it_power::wall_factor(cooling) * POWER_MARGIN);
            max_cpu_watts.push((p.cpu_typical_watts + p.host_span_watts) * POWER_MARGIN);
        }
        NodeBounds { max_watts, max_cpu_watts }
    }

    /// Checks a heartbeat's figures: a draw within 0 and the node's full draw (with a margin),
    /// caps above 0 and within what anyone asks for.
    pub(crate) fn check_heartbeat(&self, id: NodeId, hb: &api::Heartbeat) -> Result<(), Refusal> {
        let i = id.index();
        if let Some(w) = hb.power_watts {
            let max = self.max_watts.get(i).copied().unwrap_or(0.0);
            if !(w.is_finite() && (0.0..=max).contains(&w)) {
                return Err(refuse("power_watts", format!("{w} W is not a draw this node can have (0 to {max:.0} W)")));
            }
        }
        if let Some(w) = hb.gpu_power_cap_watts
            && !(w.is_finite() && w > 0.0 && w <= MAX_GPU_CAP_WATTS)
        {
            return Err(refuse("gpu_power_cap_watts", format!("{w} W per GPU is not a cap (above 0, at most 5000)")));
        }
        if let Some(w) = hb.cpu_power_cap_watts {
            let max = self.max_cpu_watts.get(i).copied().unwrap_or(0.0);
            if !(w.is_finite() && w > 0.0 && w <= max.max(1.0)) {
                return Err(refuse(
                    "cpu_power_cap_watts",
                    format!("{w} W is not a CPU limit of this node (above 0, at most {max:.0} W)"),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a join: an address other nodes can dial (a host name or an IP address, with an
/// optional port), and the GPUs the fleet declares for the node, each once, with plausible
/// figures and the fleet's model.
pub(crate) fn check_join(fleet: &Fleet, id: NodeId, join: &api::AgentJoin) -> Result<(), Refusal> {
    check_address(&join.address)?;
    let declared = usize::from(fleet.node(id).gpu_count);
    if join.gpus.len() != declared {
        return Err(refuse(
            "gpus",
            format!("the node reports {} GPUs where the fleet declares {declared}", join.gpus.len()),
        ));
    }
    let model = fleet.node_gpu_model(id).map(|m| m.name.to_ascii_lowercase());
    let mut seen = vec![false; declared];
    for g in &join.gpus {
        let Some(slot) = usize::try_from(g.index).ok().and_then(|i| seen.get_mut(i)) else {
            return Err(refuse("gpus", format!("GPU index {} is outside 0..{declared}", g.index)));
        };
        if std::mem::replace(slot, true) {
            return Err(refuse("gpus", format!("GPU index {} is listed twice", g.index)));
        }
        if g.model.is_empty() || g.model.len() > MAX_MODEL_LEN || g.model.chars().any(char::is_control) {
            return Err(refuse(
                "gpus",
                format!("GPU {}: a model name of 1 to {MAX_MODEL_LEN} printable characters", g.index),
            ));
        }
        // A driver names the model at length ("NVIDIA H200"), a fleet file briefly ("H200").
        if let Some(m) = &model {
            let reported = g.model.to_ascii_lowercase();
            if !(reported.contains(m.as_str()) || m.contains(reported.as_str())) {
                return Err(refuse("gpus", format!("GPU {} is a {:?} where the fleet declares {m}", g.index, g.model)));
            }
        }
        if g.memory_mib > MAX_GPU_MEMORY_MIB {
            return Err(refuse("gpus", format!("GPU {}: {} MiB of memory is not plausible", g.index, g.memory_mib)));
        }
        if !(g.power_limit_watts.is_finite() && g.power_limit_watts >= 0.0 && g.power_limit_watts <= MAX_GPU_CAP_WATTS)
        {
            return Err(refuse(
                "gpus",
                format!("GPU {}: a power limit of {} W is not plausible", g.index, g.power_limit_watts),
            ));
        }
    }
    Ok(())
}

/// A host name, an IPv4 address or a bracketed IPv6 address, with an optional port: nothing a
/// log line or a path could be forged from.
fn check_address(address: &str) -> Result<(), Refusal> {
    let bad = |why: &str| refuse("address", format!("{address:?}: {why}"));
    if address.is_empty() || address.len() > MAX_ADDRESS_LEN {
        return Err(bad("1 to 256 characters"));
    }
    if address.parse::<std::net::IpAddr>().is_ok() || address.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = match address.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (address, None),
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(bad("the port must be a number up to 65535"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(bad("a host name (letters, digits, '-', '.'), or an IP address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Fleet {
        model::fleet_toml::parse_fleet(include_str!("../../../../fleets/small.toml")).expect("the small fleet")
    }

    fn gpus(n: u32, model: &str) -> Vec<api::GpuInfo> {
        (0..n)
            .map(|index| api::GpuInfo {
                index,
                model: model.into(),
                memory_mib: 143_360,
                power_limit_watts: 700.0,
                nvlink_peers: Vec::new(),
                mig_enabled: false,
                r#virtual: true,
            })
            .collect()
    }

    fn join(address: &str, gpus: Vec<api::GpuInfo>) -> api::AgentJoin {
        api::AgentJoin {
            join_token: "t".into(),
            node: "hall-a-r001-n01".into(),
            address: address.into(),
            gpus,
            runtimes: Vec::new(),
        }
    }

    #[test]
    fn joins_must_match_the_fleet_and_name_a_dialable_address() {
        let f = fleet();
        let id = f.node_ids().find(|&i| f.node(i).name == "hall-a-r001-n01").unwrap();
        assert_eq!(check_join(&f, id, &join("10.0.0.7", gpus(8, "H200"))), Ok(()));
        assert_eq!(check_join(&f, id, &join("node-7.hall-a.example:9000", gpus(8, "NVIDIA H200"))), Ok(()));
        assert_eq!(check_join(&f, id, &join("[::1]:80", gpus(8, "H200"))), Ok(()));
        for address in ["", "../../etc/passwd", "a\nINFO forged line", "\u{1b}[31m", "host:99999", "a b"] {
            assert_eq!(
                check_join(&f, id, &join(address, gpus(8, "H200"))).unwrap_err().field,
                "address",
                "{address:?}"
            );
        }
        let mut twice = gpus(8, "H200");
        twice[7].index = 0;
        let mut huge = gpus(8, "H200");
        huge[3].memory_mib = 1 << 63;
        for (why, g) in [
            ("one GPU", gpus(1, "H200")),
            ("none", Vec::new()),
            ("an A100", gpus(8, "A100")),
            ("twice", twice),
            ("huge", huge),
        ] {
            assert_eq!(check_join(&f, id, &join("10.0.0.7", g)).unwrap_err().field, "gpus", "{why}");
        }
    }

    #[test]
    fn heartbeats_must_report_physical_figures() {
        let f = fleet();
        let b = NodeBounds::new(&f);
        let id = f.node_ids().next().unwrap();
        let beat = |power: Option<f64>, gpu: Option<f64>, cpu: Option<f64>| api::Heartbeat {
            power_watts: power,
            gpu_power_cap_watts: gpu,
            cpu_power_cap_watts: cpu,
            ..Default::default()
        };
        assert_eq!(b.check_heartbeat(id, &beat(Some(6_500.0), Some(500.0), Some(400.0))), Ok(()));
        assert_eq!(b.check_heartbeat(id, &beat(None, None, None)), Ok(()));
        for (field, hb) in [
            ("power_watts", beat(Some(-5_000_000.0), None, None)),
            ("power_watts", beat(Some(1e308), None, None)),
            ("power_watts", beat(Some(f64::NAN), None, None)),
            ("power_watts", beat(Some(1_000_000.0), None, None)),
            ("gpu_power_cap_watts", beat(None, Some(-1.0), None)),
            ("gpu_power_cap_watts", beat(None, Some(1e308), None)),
            ("cpu_power_cap_watts", beat(None, None, Some(0.0))),
            ("cpu_power_cap_watts", beat(None, None, Some(1e9))),
        ] {
            assert_eq!(b.check_heartbeat(id, &hb).unwrap_err().field, field, "{hb:?}");
        }
    }
}
