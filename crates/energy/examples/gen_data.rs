//! Regenerates the data files drome ships in `crates/energy/data/` from their documented
//! construction: `cargo run -p energy --example gen_data`.

use energy::climate::{VALENCE_NORMALS, VALENCE_SEED, synthesize};
use energy::grid::{FRANCE_SEED, synthesize_france};
use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let year = synthesize(&VALENCE_NORMALS, VALENCE_SEED);
    let comment = format!(
        "Hourly outdoor temperature, Valence-like climate, 365 days, local standard time (UTC+1).\n\
         Synthesised by energy::climate::synthesize from {} (seed {VALENCE_SEED}).\n\
         Not a measured year: see SOURCE.md.",
        VALENCE_NORMALS.station
    );
    std::fs::write(dir.join("valence_temperature.csv"), year.to_csv(&comment))?;
    let grid = synthesize_france(FRANCE_SEED);
    let comment = format!(
        "Hourly day-ahead price (EUR/MWh) and carbon intensity (gCO2/kWh), representative French year,\n\
         365 days from a Monday, local standard time (UTC+1). Synthesised by\n\
         energy::grid::synthesize_france (seed {FRANCE_SEED}) from published monthly levels: see SOURCE.md."
    );
    std::fs::write(dir.join("france_grid.csv"), grid.to_csv(&comment))?;
    Ok(())
}
