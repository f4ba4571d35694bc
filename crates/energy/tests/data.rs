//! The shipped data years: shape, agreement with the cited normals and levels, and the parser's
//! refusals.

use energy::climate::{HOURS_PER_YEAR, VALENCE_NORMALS, VALENCE_SEED, synthesize};
use energy::grid::{FRANCE_CO2_G_PER_KWH, FRANCE_PRICE_EUR_PER_MWH, FRANCE_SEED, synthesize_france};
use energy::{EnergyError, GridYear, TemperatureYear};

#[test]
fn valence_year_has_8760_hours_matching_the_normals() {
    let year = TemperatureYear::valence().unwrap();
    assert_eq!(year.hours().len(), HOURS_PER_YEAR);
    let means = year.monthly_means();
    for (m, mean) in means.iter().enumerate() {
        let normal = VALENCE_NORMALS.mean_celsius(m);
        assert!((mean - normal).abs() < 0.5, "month {}: {mean:.2} °C vs normal {normal:.2} °C", m + 1);
    }
    // Seasons and a diurnal cycle: July is warmer than January, afternoons warmer than dawns.
    assert!(means[6] > means[0] + 15.0);
    let hourly = year.hours();
    let at = |h: usize| (0..365).map(|d| hourly[d * 24 + h]).sum::<f64>() / 365.0;
    assert!(at(15) > at(5) + 7.0, "15:00 {:.1} vs 05:00 {:.1}", at(15), at(5));
    let (lo, hi) = hourly.iter().fold((f64::MAX, f64::MIN), |(a, b), &c| (a.min(c), b.max(c)));
    assert!(lo < 0.0 && hi > 30.0, "range {lo}..{hi}");
}

#[test]
fn shipped_files_match_their_documented_construction() {
    let shipped = TemperatureYear::valence().unwrap();
    let built = synthesize(&VALENCE_NORMALS, VALENCE_SEED);
    for (h, (a, b)) in shipped.hours().iter().zip(built.hours()).enumerate() {
        assert!((a - b).abs() <= 0.051, "hour {h}: shipped {a}, built {b}");
    }
    let shipped = GridYear::france().unwrap();
    let built = synthesize_france(FRANCE_SEED);
    assert_eq!(shipped.hours(), HOURS_PER_YEAR);
    for h in 0..HOURS_PER_YEAR {
        assert!((shipped.price_eur_per_mwh(h) - built.price_eur_per_mwh(h)).abs() <= 0.0051, "hour {h}");
        assert!((shipped.co2_g_per_kwh(h) - built.co2_g_per_kwh(h)).abs() <= 0.051, "hour {h}");
    }
}

#[test]
fn france_year_keeps_the_published_levels() {
    let grid = GridYear::france().unwrap();
    let (price, co2) = grid.means();
    let level = FRANCE_PRICE_EUR_PER_MWH.iter().sum::<f64>() / 12.0;
    assert!((50.0..65.0).contains(&price), "mean price {price}");
    assert!((price - level).abs() < 1.5, "{price} vs {level}");
    assert!((15.0..35.0).contains(&co2), "mean carbon {co2}");
    let level = FRANCE_CO2_G_PER_KWH.iter().sum::<f64>() / 12.0;
    assert!((co2 - level).abs() < 1.0);
    // Evening peak above the night trough on a January weekday (1 January is a Monday).
    let day = 1;
    assert!(grid.price_eur_per_mwh(day * 24 + 19) > grid.price_eur_per_mwh(day * 24 + 3));
}

fn csv_error(result: Result<GridYear, EnergyError>) -> (usize, usize, String) {
    match result {
        Err(EnergyError::Csv { line, column, message }) => (line, column, message),
        other => panic!("expected a CSV error, got {other:?}"),
    }
}

#[test]
fn grid_parser_names_line_and_column() {
    let ok = "# mine\nhour,price_eur_per_mwh,co2_g_per_kwh\n0,50,20\n1,-5.5,21\n";
    let g = GridYear::parse(ok).unwrap();
    assert_eq!(g.hours(), 2);
    assert_eq!(g.price_eur_per_mwh(3), -5.5, "files repeat");

    let (line, column, msg) = csv_error(GridYear::parse("hour,price_eur_per_mwh,co2_g_per_kwh\n0,50,20\n1,abc,21\n"));
    assert_eq!((line, column), (3, 2), "{msg}");
    assert!(msg.contains("price_eur_per_mwh"), "{msg}");

    let (line, column, _) = csv_error(GridYear::parse("hour,price_eur_per_mwh,co2_g_per_kwh\n0,50\n"));
    assert_eq!((line, column), (2, 3));

    let (line, column, _) = csv_error(GridYear::parse("hour,price,co2\n0,50,20\n"));
    assert_eq!((line, column), (1, 1));

    let (line, column, msg) = csv_error(GridYear::parse("hour,price_eur_per_mwh,co2_g_per_kwh\n0,50,20\n2,50,20\n"));
    assert_eq!((line, column), (3, 1), "{msg}");

    let (line, column, _) = csv_error(GridYear::parse("hour,price_eur_per_mwh,co2_g_per_kwh\n0,50,NaN\n"));
    assert_eq!((line, column), (2, 3));

    let err = GridYear::parse("hour,price_eur_per_mwh,co2_g_per_kwh\n0,50,20\n1,50,20,7\n").unwrap_err();
    assert_eq!(err.to_string(), "line 3, column 4: expected 3 fields, found 4");
    assert!(matches!(GridYear::parse("hour,price_eur_per_mwh,co2_g_per_kwh\n0,50,-1\n"), Err(EnergyError::Invalid(_))));
    assert!(matches!(GridYear::parse(""), Err(EnergyError::Csv { line: 1, .. })));
}

#[test]
fn temperature_parser_wants_a_whole_year() {
    let err = TemperatureYear::parse("hour,outdoor_celsius\n0,5\n1,6\n").unwrap_err();
    assert!(err.to_string().contains("8760"), "{err}");
    let err = TemperatureYear::parse("hour,outdoor_celsius\n0,5\n1,x\n").unwrap_err();
    assert_eq!(
        err,
        EnergyError::Csv { line: 3, column: 2, message: "`outdoor_celsius` must be a finite number, found `x`".into() }
    );
}
