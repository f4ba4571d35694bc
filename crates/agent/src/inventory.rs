//! What GPUs a node has: found through NVML where a driver is present, declared otherwise.

use api::GpuInfo;

/// Why NVML gave no inventory.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no NVIDIA driver: {0}")]
    NoDriver(String),
    #[error("nvml: {0}")]
    Nvml(String),
}

/// Board power limits of well-known models, watts (for declared GPUs).
fn board_watts(model: &str) -> f64 {
    let m = model.to_ascii_uppercase();
    if m.contains("B200") {
        1000.0
    } else if m.contains("H200") || m.contains("H100") {
        700.0
    } else if m.contains("A100") {
        400.0
    } else {
        300.0
    }
}

/// `count` declared GPUs of `model`, all NVLinked together, as in an HGX board.
pub fn declared_gpus(count: u32, model: &str) -> Vec<GpuInfo> {
    (0..count)
        .map(|i| GpuInfo {
            index: i,
            model: model.to_string(),
            memory_mib: if model.to_ascii_uppercase().contains("H200") { 141 * 1024 } else { 80 * 1024 },
            power_limit_watts: board_watts(model),
            nvlink_peers: (0..count).filter(|&j| j != i).collect(),
            mig_enabled: false,
            r#virtual: true,
        })
        .collect()
}

fn nvml_err(e: nvml_wrapper::error::NvmlError) -> ProbeError {
    ProbeError::Nvml(e.to_string())
}

/// Opens NVML (libnvidia-ml is loaded at run time).
pub fn nvml() -> Result<nvml_wrapper::Nvml, ProbeError> {
    nvml_wrapper::Nvml::init().map_err(|e| ProbeError::NoDriver(e.to_string()))
}

/// The GPUs NVML sees: model, memory, power limit, NVLink peers and MIG mode.
pub fn probe() -> Result<Vec<GpuInfo>, ProbeError> {
    let nvml = nvml()?;
    let count = nvml.device_count().map_err(nvml_err)?;
    let mut bus_ids = Vec::new();
    let mut gpus = Vec::new();
    for i in 0..count {
        let d = nvml.device_by_index(i).map_err(nvml_err)?;
        bus_ids.push(d.pci_info().map(|p| p.bus_id).unwrap_or_default());
        let mig_enabled = d.mig_mode().map(|m| m.current == 1).unwrap_or(false);
        gpus.push(GpuInfo {
            index: i,
            model: d.name().map_err(nvml_err)?,
            memory_mib: d.memory_info().map(|m| m.total / (1024 * 1024)).unwrap_or(0),
            power_limit_watts: d.enforced_power_limit().map(|mw| f64::from(mw) / 1000.0).unwrap_or(0.0),
            nvlink_peers: Vec::new(),
            mig_enabled,
            r#virtual: false,
        });
    }
    // NVLink peers: each active link's remote PCI bus id, matched against the local GPUs.
    for (i, gpu) in gpus.iter_mut().enumerate() {
        let Ok(d) = nvml.device_by_index(i as u32) else { continue };
        let mut peers = Vec::new();
        for link in 0..18 {
            let l = d.link_wrapper_for(link);
            if !l.is_active().unwrap_or(false) {
                continue;
            }
            if let Ok(remote) = l.remote_pci_info()
                && let Some(j) = bus_ids.iter().position(|b| *b == remote.bus_id)
                && !peers.contains(&(j as u32))
            {
                peers.push(j as u32);
            }
        }
        peers.sort_unstable();
        gpu.nvlink_peers = peers;
    }
    Ok(gpus)
}

/// Sets every GPU's power limit (watts, within what the board accepts) through NVML, or back
/// to the board's default with `None`; needs root.
pub fn set_power_limit(watts: Option<f64>) -> Result<(), ProbeError> {
    let nvml = nvml()?;
    let count = nvml.device_count().map_err(nvml_err)?;
    for i in 0..count {
        let mut d = nvml.device_by_index(i).map_err(nvml_err)?;
        let mw = match watts {
            Some(w) => {
                let c = d.power_management_limit_constraints().map_err(nvml_err)?;
                ((w * 1000.0) as u32).clamp(c.min_limit, c.max_limit)
            }
            None => d.power_management_limit_default().map_err(nvml_err)?,
        };
        d.set_power_management_limit(mw).map_err(nvml_err)?;
    }
    Ok(())
}

/// Total board power draw of the node's GPUs, watts.
pub fn power_draw() -> Result<f64, ProbeError> {
    let nvml = nvml()?;
    let count = nvml.device_count().map_err(nvml_err)?;
    let mut total = 0.0;
    for i in 0..count {
        let d = nvml.device_by_index(i).map_err(nvml_err)?;
        total += f64::from(d.power_usage().map_err(nvml_err)?) / 1000.0;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_gpus_are_an_nvlinked_board() {
        let g = declared_gpus(8, "H200");
        assert_eq!(g.len(), 8);
        assert_eq!(g[3].nvlink_peers.len(), 7);
        assert!(!g[3].nvlink_peers.contains(&3));
        assert_eq!(g[0].power_limit_watts, 700.0);
        assert!(g.iter().all(|x| x.r#virtual));
    }

    #[test]
    fn probe_answers_without_a_driver() {
        // Without a driver this is an error, never a panic.
        match probe() {
            Ok(gpus) => assert!(gpus.iter().all(|g| !g.r#virtual)),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
