//! CPU package power limits through the kernel's powercap interface (RAPL): what a host cap
//! of the dynamic power mode sets. Each package zone is `<root>/intel-rapl:N` (AMD packages
//! appear under the same driver), its long-term limit `constraint_0_power_limit_uw`, its
//! largest allowed value `constraint_0_max_power_uw`.

use std::path::{Path, PathBuf};

/// Where the kernel exposes powercap zones.
pub const POWERCAP_ROOT: &str = "/sys/class/powercap";

#[derive(Debug, thiserror::Error)]
pub enum RaplError {
    #[error("no RAPL package zone under {0}")]
    NoZones(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a number of microwatts: '{text}'")]
    Parse { path: String, text: String },
}

/// Package zones (`intel-rapl:N`, not their `intel-rapl:N:M` subzones), in name order.
fn package_zones(root: &Path) -> Result<Vec<PathBuf>, RaplError> {
    let io = |source| RaplError::Io { path: root.display().to_string(), source };
    let mut zones: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("intel-rapl:").is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    zones.sort();
    if zones.is_empty() {
        return Err(RaplError::NoZones(root.display().to_string()));
    }
    Ok(zones)
}

fn read_uw(path: &Path) -> Result<u64, RaplError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| RaplError::Io { path: path.display().to_string(), source })?;
    text.trim()
        .parse()
        .map_err(|_| RaplError::Parse { path: path.display().to_string(), text: text.trim().to_string() })
}

/// Holds the packages under `root` to `watts` in all, split evenly (`None`: back to each
/// package's largest allowed limit). Returns how many packages were set.
pub fn set_package_limit(root: &Path, watts: Option<f64>) -> Result<usize, RaplError> {
    let zones = package_zones(root)?;
    let share = watts.map(|w| (w.max(0.0) / zones.len() as f64 * 1e6) as u64);
    for zone in &zones {
        let max = read_uw(&zone.join("constraint_0_max_power_uw")).ok();
        let uw = match (share, max) {
            (Some(s), Some(m)) => s.min(m),
            (Some(s), None) => s,
            (None, Some(m)) => m,
            (None, None) => continue,
        };
        let path = zone.join("constraint_0_power_limit_uw");
        std::fs::write(&path, uw.to_string())
            .map_err(|source| RaplError::Io { path: path.display().to_string(), source })?;
    }
    Ok(zones.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A powercap tree laid out as the kernel lays it out, in a temporary directory.
    fn tree(packages: usize) -> PathBuf {
        let root = std::env::temp_dir().join(format!("drome-rapl-{}-{packages}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for p in 0..packages {
            let zone = root.join(format!("intel-rapl:{p}"));
            std::fs::create_dir_all(zone.join(format!("intel-rapl:{p}:0"))).unwrap();
            std::fs::write(zone.join("name"), format!("package-{p}\n")).unwrap();
            std::fs::write(zone.join("constraint_0_max_power_uw"), "350000000\n").unwrap();
            std::fs::write(zone.join("constraint_0_power_limit_uw"), "350000000\n").unwrap();
        }
        std::fs::create_dir_all(root.join("intel-rapl:0:0")).unwrap();
        root
    }

    fn limit(root: &Path, p: usize) -> u64 {
        read_uw(&root.join(format!("intel-rapl:{p}/constraint_0_power_limit_uw"))).unwrap()
    }

    #[test]
    fn a_limit_is_split_over_the_packages_and_lifted_to_their_maximum() {
        let root = tree(2);
        assert_eq!(set_package_limit(&root, Some(400.0)).unwrap(), 2);
        assert_eq!((limit(&root, 0), limit(&root, 1)), (200_000_000, 200_000_000));
        // Never above what a package allows.
        set_package_limit(&root, Some(1000.0)).unwrap();
        assert_eq!(limit(&root, 0), 350_000_000);
        set_package_limit(&root, Some(300.0)).unwrap();
        set_package_limit(&root, None).unwrap();
        assert_eq!((limit(&root, 0), limit(&root, 1)), (350_000_000, 350_000_000));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_machine_without_rapl_says_so() {
        let root = std::env::temp_dir().join(format!("drome-rapl-none-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let err = set_package_limit(&root, Some(100.0)).unwrap_err();
        assert!(err.to_string().contains("no RAPL package zone"), "{err}");
        let missing = set_package_limit(Path::new("/nonexistent/powercap"), Some(100.0)).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/powercap"), "{missing}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
