//! The federation's sites file: each site's address and admin token, its fiber, fallbacks for what
//! a site may not report, and tenants bound to a site or a region.
//!
//! A site server reports its grid price and carbon (over the hours ahead, its price adder
//! included) and its heat network's demand from its own fleet file; the file's
//! `price_eur_per_mwh`, `co2_g_per_kwh` and `heat_demand_mw` only stand in for a site that reports
//! none (an older server, or no heat network declared in its fleet), and are otherwise ignored.
//!
//! ```toml
//! [[site]]
//! name = "valence"
//! url = "http://10.0.0.1:8080"
//! admin_token_file = "/etc/drome/valence.admin"   # or admin_token = "..."
//! region = "FR-ARA"                 # else what the site reports
//! price_eur_per_mwh = 62.0          # fallbacks, when the site reports no figure:
//! co2_g_per_kwh = 32.0              #   the hours ahead, with the site's adder
//! heat_demand_mw = 3.0              #   what its heat network asks for
//! fiber_gbps = 400.0
//!
//! [[tenant]]
//! name = "sovereign-lab"
//! region = "FR-ARA"                 # or site = "valence"
//! ```

use serde::Deserialize;
use std::path::Path;

/// A sites file that cannot be used, naming the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid { path: String, field: String, message: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    site: Vec<SiteFile>,
    #[serde(default)]
    tenant: Vec<TenantBinding>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFile {
    name: String,
    url: String,
    admin_token: Option<String>,
    admin_token_file: Option<String>,
    region: Option<String>,
    price_eur_per_mwh: Option<f64>,
    co2_g_per_kwh: Option<f64>,
    heat_demand_mw: Option<f64>,
    fiber_gbps: Option<f64>,
}

/// One site of the federation.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteConfig {
    pub name: String,
    /// Its API, without a trailing slash.
    pub url: String,
    pub admin_token: String,
    pub region: Option<String>,
    /// Fallback when the site reports no price (0 when the file gives none either).
    pub price_eur_per_mwh: f64,
    /// Fallback when the site reports no carbon intensity.
    pub co2_g_per_kwh: f64,
    /// Fallback when the site reports no heat network demand.
    pub heat_demand_watts: f64,
    pub fiber_gbps: Option<f64>,
}

/// A tenant whose jobs must stay at one site or in one region.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantBinding {
    pub name: String,
    pub site: Option<String>,
    pub region: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SitesConfig {
    pub sites: Vec<SiteConfig>,
    pub tenants: Vec<TenantBinding>,
}

impl SitesConfig {
    pub fn load(path: &Path) -> Result<SitesConfig, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        SitesConfig::parse(&text, &p, path.parent())
    }

    /// Parses a sites file's text; `base` is where relative token files are found.
    pub fn parse(text: &str, path: &str, base: Option<&Path>) -> Result<SitesConfig, ConfigError> {
        let file: File =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_string(), message: e.to_string() })?;
        let invalid = |field: String, message: &str| ConfigError::Invalid {
            path: path.to_string(),
            field,
            message: message.to_string(),
        };
        if file.site.is_empty() {
            return Err(invalid("site".into(), "at least one [[site]] is needed"));
        }
        let mut sites = Vec::with_capacity(file.site.len());
        for (i, s) in file.site.into_iter().enumerate() {
            let at = |f: &str| format!("site[{i}].{f}");
            if s.name.trim().is_empty() {
                return Err(invalid(at("name"), "must not be empty"));
            }
            if sites.iter().any(|o: &SiteConfig| o.name == s.name) {
                return Err(invalid(at("name"), "two sites of this name"));
            }
            if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
                return Err(invalid(at("url"), "an http:// or https:// address"));
            }
            let admin_token = match (s.admin_token, s.admin_token_file) {
                (Some(t), None) => t,
                (None, Some(f)) => {
                    let file = match base {
                        Some(b) if Path::new(&f).is_relative() => b.join(&f),
                        _ => Path::new(&f).to_path_buf(),
                    };
                    std::fs::read_to_string(&file)
                        .map_err(|e| invalid(at("admin_token_file"), &format!("{}: {e}", file.display())))?
                        .trim()
                        .to_string()
                }
                _ => return Err(invalid(at("admin_token"), "give admin_token or admin_token_file, one of them")),
            };
            if admin_token.is_empty() {
                return Err(invalid(at("admin_token"), "must not be empty"));
            }
            let number = |v: Option<f64>, f: &str, max: f64| -> Result<Option<f64>, ConfigError> {
                match v {
                    Some(x) if !(x.is_finite() && (0.0..=max).contains(&x)) => {
                        Err(invalid(at(f), &format!("between 0 and {max}")))
                    }
                    v => Ok(v),
                }
            };
            sites.push(SiteConfig {
                url: s.url.trim_end_matches('/').to_string(),
                admin_token,
                region: s.region,
                price_eur_per_mwh: number(s.price_eur_per_mwh, "price_eur_per_mwh", 10_000.0)?.unwrap_or(0.0),
                co2_g_per_kwh: number(s.co2_g_per_kwh, "co2_g_per_kwh", 2_000.0)?.unwrap_or(0.0),
                heat_demand_watts: number(s.heat_demand_mw, "heat_demand_mw", 10_000.0)?.unwrap_or(0.0) * 1e6,
                fiber_gbps: number(s.fiber_gbps, "fiber_gbps", 1e6)?,
                name: s.name,
            });
        }
        for (i, t) in file.tenant.iter().enumerate() {
            if t.site.is_some() == t.region.is_some() {
                return Err(invalid(format!("tenant[{i}]"), "give site or region, one of them"));
            }
            if let Some(site) = &t.site
                && !sites.iter().any(|s| &s.name == site)
            {
                return Err(invalid(format!("tenant[{i}].site"), &format!("no site '{site}' in this file")));
            }
        }
        Ok(SitesConfig { sites, tenants: file.tenant })
    }

    /// The site or region `tenant`'s jobs must stay in.
    pub fn binding(&self, tenant: &str) -> Option<&TenantBinding> {
        self.tenants.iter().find(|t| t.name == tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_two_sites_and_a_bound_tenant() {
        let text = r#"
            [[site]]
            name = "a"
            url = "http://127.0.0.1:1/"
            admin_token = "t"
            heat_demand_mw = 2.0
            [[site]]
            name = "b"
            url = "http://127.0.0.1:2"
            admin_token = "u"
            [[tenant]]
            name = "lab"
            site = "a"
        "#;
        let c = SitesConfig::parse(text, "sites.toml", None).unwrap();
        assert_eq!(c.sites[0].url, "http://127.0.0.1:1");
        assert_eq!(c.sites[0].heat_demand_watts, 2e6);
        assert_eq!(c.binding("lab").and_then(|b| b.site.as_deref()), Some("a"));
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let bad = r#"
            [[site]]
            name = "a"
            url = "ftp://x"
            admin_token = "t"
        "#;
        let e = SitesConfig::parse(bad, "sites.toml", None).unwrap_err().to_string();
        assert!(e.contains("sites.toml") && e.contains("site[0].url"), "{e}");
        let unbound = r#"
            [[site]]
            name = "a"
            url = "http://x"
            admin_token = "t"
            [[tenant]]
            name = "lab"
            site = "b"
        "#;
        let e = SitesConfig::parse(unbound, "sites.toml", None).unwrap_err().to_string();
        assert!(e.contains("tenant[0].site"), "{e}");
    }
}
