//! The energy model's inputs on any text: hourly outdoor temperatures, grid prices and carbon,
//! and a replay's GPU allocation series. Each parses or says which line and column is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    match choice % 3 {
        0 => drop(energy::climate::TemperatureYear::parse(text)),
        1 => drop(energy::grid::GridYear::parse(text)),
        _ => {
            if let Ok(points) = energy::account::parse_allocation_csv(text) {
                assert!(points.iter().all(|(t, a)| t.is_finite() && a.is_finite()), "points are numbers");
            }
        }
    }
});
