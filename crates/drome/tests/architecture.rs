//! The dependency rules of ARCHITECTURE.md, checked: the scheduling core stays free of runtimes,
//! SQL, HTTP and the clock, and internal crates depend only downwards.

use std::collections::BTreeMap;
use std::path::Path;

const CRATES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Internal crates each crate may depend on (normal dependencies). A crate missing here fails the
/// test: add it, and its section to ARCHITECTURE.md.
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("model", &[][..]),
        ("sched", &["model"][..]),
        ("energy", &["model"][..]),
        ("dispatch", &[][..]),
        ("sim", &["model", "sched", "energy", "dispatch"][..]),
        ("trace", &["model"][..]),
        ("report", &["model"][..]),
        ("api", &["model"][..]),
        ("store", &[][..]),
        ("tls", &[][..]),
        ("server", &["model", "sched", "energy", "api", "store", "tls"][..]),
        ("agent", &["model", "energy", "api", "tls"][..]),
        // A peer of the site servers, not above them: it speaks their API, never their code.
        ("federation", &["api", "dispatch", "store"][..]),
        (
            "drome",
            &[
                "model",
                "sched",
                "sim",
                "trace",
                "report",
                "energy",
                "dispatch",
                "api",
                "store",
                "server",
                "agent",
                "tls",
                "federation",
            ][..],
        ),
    ])
}

/// External crates the pure core must never use.
const IMPURE: &[&str] =
    &["tokio", "sqlx", "axum", "hyper", "reqwest", "tower", "tower-http", "rusqlite", "tokio-postgres"];
const PURE: &[&str] = &["model", "sched", "sim", "energy", "dispatch"];

fn deps(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    doc.get("dependencies").and_then(|d| d.as_table()).map(|t| t.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn internal_dependencies_point_downwards_and_the_core_stays_pure() {
    let allowed = allowed();
    let mut seen = 0;
    for entry in std::fs::read_dir(CRATES).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let Some(ok) = allowed.get(name.as_str()) else {
            panic!("crate {name} has no dependency rule: add it to this test and to ARCHITECTURE.md");
        };
        seen += 1;
        for dep in deps(&manifest) {
            if allowed.contains_key(dep.as_str()) {
                assert!(ok.contains(&dep.as_str()), "{name} must not depend on {dep}");
            }
            if PURE.contains(&name.as_str()) {
                assert!(!IMPURE.contains(&dep.as_str()), "{name} is pure and must not depend on {dep}");
            }
        }
    }
    assert!(seen >= 5, "found only {seen} crates under {CRATES}");
}

#[test]
fn the_core_reads_no_clock_and_no_unseeded_randomness() {
    for name in PURE {
        let src = Path::new(CRATES).join(name).join("src");
        if !src.exists() {
            continue;
        }
        let mut stack = vec![src];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for banned in
                        ["SystemTime::now", "Instant::now", "thread_rng", "rand::rng()", "std::fs::", "std::net::"]
                    {
                        assert!(
                            !text.contains(banned),
                            "{} uses {banned}: pass time, seeds and data in",
                            path.display()
                        );
                    }
                }
            }
        }
    }
}
