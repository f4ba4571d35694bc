//! GPU models. A fleet keeps a table of the models it holds; nodes refer to it by [`GpuModelId`].

use serde::{Deserialize, Serialize};
use std::fmt;

/// Index into a fleet's GPU model table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GpuModelId(pub u16);

/// The GPU families drome knows figures for. Anything else is [`GpuFamily::Other`] and keeps its name
/// in [`GpuModel::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GpuFamily {
    H200,
    H100,
    B200,
    A100,
    V100,
    T4,
    P100,
    A10,
    Other,
}

impl GpuFamily {
    pub const KNOWN: [GpuFamily; 8] = [
        GpuFamily::H200,
        GpuFamily::H100,
        GpuFamily::B200,
        GpuFamily::A100,
        GpuFamily::V100,
        GpuFamily::T4,
        GpuFamily::P100,
        GpuFamily::A10,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GpuFamily::H200 => "H200",
            GpuFamily::H100 => "H100",
            GpuFamily::B200 => "B200",
            GpuFamily::A100 => "A100",
            GpuFamily::V100 => "V100",
            GpuFamily::T4 => "T4",
            GpuFamily::P100 => "P100",
            GpuFamily::A10 => "A10",
            GpuFamily::Other => "other",
        }
    }

    /// Memory of the common data-centre part, in MiB (vendor data sheets: H200 SXM 141 GB HBM3e,
    /// H100 SXM 80 GB, B200 180 GB usable, A100 SXM 80 GB, V100 16 GB, T4 16 GB, P100 16 GB, A10 24 GB).
    pub fn default_memory_mib(self) -> u64 {
        match self {
            GpuFamily::H200 => 141 * 1024,
            GpuFamily::H100 => 80 * 1024,
            GpuFamily::B200 => 180 * 1024,
            GpuFamily::A100 => 80 * 1024,
            GpuFamily::V100 | GpuFamily::T4 | GpuFamily::P100 => 16 * 1024,
            GpuFamily::A10 => 24 * 1024,
            GpuFamily::Other => 0,
        }
    }

    /// Board power limit (TDP) in watts (vendor data sheets: H200/H100 SXM 700 W, B200 1,000 W,
    /// A100 SXM 400 W, V100 SXM2 300 W, T4 70 W, P100 PCIe 250 W, A10 150 W). Unknown models get
    /// 300 W, a mid-range PCIe accelerator, until the fleet file says otherwise.
    pub fn default_board_power_watts(self) -> f64 {
        match self {
            GpuFamily::H200 | GpuFamily::H100 => 700.0,
            GpuFamily::B200 => 1000.0,
            GpuFamily::A100 => 400.0,
            GpuFamily::V100 => 300.0,
            GpuFamily::T4 => 70.0,
            GpuFamily::P100 => 250.0,
            GpuFamily::A10 => 150.0,
            GpuFamily::Other => 300.0,
        }
    }
}

impl fmt::Display for GpuFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A GPU model as a fleet holds it: its name as written (`V100M32`, `H200`, `G2`), the family drome
/// knows figures for, memory and board power.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuModel {
    pub name: String,
    pub family: GpuFamily,
    pub memory_mib: u64,
    pub board_power_watts: f64,
}

impl GpuModel {
    /// Recognises a model from its name, case-insensitively, and fills in the family's figures.
    /// Names drome does not know keep their name with family [`GpuFamily::Other`].
    pub fn from_name(name: &str) -> GpuModel {
        let name = name.trim();
        let upper = name.to_ascii_uppercase();
        let family = family_of(&upper);
        let mut memory_mib = family.default_memory_mib();
        // Variants that carry their memory in the name: V100M32, A100-40GB, A100-SXM4-80GB.
        if let Some(gib) = memory_in_name(&upper) {
            memory_mib = gib * 1024;
        }
        GpuModel { name: name.to_string(), family, memory_mib, board_power_watts: family.default_board_power_watts() }
    }

    /// True if `wanted` (a model name or a family name, any case) names this model.
    /// `V100` matches `V100M16` and `V100M32`; `V100M32` matches only itself.
    pub fn answers_to(&self, wanted: &str) -> bool {
        let wanted = wanted.trim();
        wanted.eq_ignore_ascii_case(&self.name)
            || (self.family != GpuFamily::Other && wanted.eq_ignore_ascii_case(self.family.as_str()))
    }
}

fn family_of(upper: &str) -> GpuFamily {
    let upper = upper.strip_prefix("NVIDIA").map(str::trim_start).unwrap_or(upper);
    let upper = upper.strip_prefix('-').unwrap_or(upper);
    // Order matters: "A100" before "A10", and China-market variants map to the part they derive from.
    let table: [(&str, GpuFamily); 10] = [
        ("H200", GpuFamily::H200),
        ("H100", GpuFamily::H100),
        ("H800", GpuFamily::H100),
        ("B200", GpuFamily::B200),
        ("A100", GpuFamily::A100),
        ("A800", GpuFamily::A100),
        ("V100", GpuFamily::V100),
        ("P100", GpuFamily::P100),
        ("T4", GpuFamily::T4),
        ("A10", GpuFamily::A10),
    ];
    for (prefix, family) in table {
        if let Some(rest) = upper.strip_prefix(prefix) {
            // "A10" must not swallow "A100"/"A10G" is still an A10; "T4" must not match "T40".
            let next = rest.chars().next();
            if next.is_none_or(|c| !c.is_ascii_digit()) {
                return family;
            }
        }
    }
    GpuFamily::Other
}

fn memory_in_name(upper: &str) -> Option<u64> {
    // "...80GB" / "...-40G"
    for (i, _) in upper.match_indices('G') {
        let digits: String = upper[..i].chars().rev().take_while(|c| c.is_ascii_digit()).collect();
        if !digits.is_empty() && (upper[i..].starts_with("GB") || i + 1 == upper.len()) {
            let gib: u64 = digits.chars().rev().collect::<String>().parse().ok()?;
            if (1..=1024).contains(&gib) {
                return Some(gib);
            }
        }
    }
    // "V100M32"
    if let Some(pos) = upper.rfind('M') {
        let digits = &upper[pos + 1..];
        if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) && pos > 0 {
            let gib: u64 = digits.parse().ok()?;
            if (1..=1024).contains(&gib) {
                return Some(gib);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, family: GpuFamily, memory_gib: u64) {
        let m = GpuModel::from_name(name);
        assert_eq!(m.family, family, "{name}");
        assert_eq!(m.memory_mib, memory_gib * 1024, "{name}");
        assert_eq!(m.name, name.trim());
    }

    #[test]
    fn recognises_models_by_name() {
        check("H200", GpuFamily::H200, 141);
        check("h100", GpuFamily::H100, 80);
        check("H800", GpuFamily::H100, 80);
        check("B200", GpuFamily::B200, 180);
        check("A100-SXM4-80GB", GpuFamily::A100, 80);
        check("A100-40GB", GpuFamily::A100, 40);
        check("A800-SXM4-80GB", GpuFamily::A100, 80);
        check("V100M16", GpuFamily::V100, 16);
        check("V100M32", GpuFamily::V100, 32);
        check("T4", GpuFamily::T4, 16);
        check("P100", GpuFamily::P100, 16);
        check("A10", GpuFamily::A10, 24);
        check("NVIDIA A10", GpuFamily::A10, 24);
        check("G2", GpuFamily::Other, 0);
        check("GPU-series-1", GpuFamily::Other, 0);
        check("MISC", GpuFamily::Other, 0);
    }

    #[test]
    fn family_names_match_their_variants_only() {
        let v32 = GpuModel::from_name("V100M32");
        assert!(v32.answers_to("v100"));
        assert!(v32.answers_to("V100M32"));
        assert!(!v32.answers_to("V100M16"));
        let g2 = GpuModel::from_name("G2");
        assert!(g2.answers_to("g2"));
        assert!(!g2.answers_to("other"));
    }
}
