//! Deferrable jobs in the live server: with a deferral gate, a deferrable job waits for the clearly
//! cheaper hour ahead while other work runs; with a flat series it runs at once.

mod common;

use common::{Db, Place, TestServer};
use serde_json::json;
use std::time::Duration;

const HOUR_MS: i64 = 3_600_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A year of 100 EUR/MWh, with the hour two hours from now (UTC hour of the year) at 10: at
/// least an hour away, so the held job cannot be released while the test runs.
fn gate_with_a_cheap_hour_ahead() -> sched::defer::DeferralGate {
    let now = now_ms();
    let hour = ((now - server::year_start_ms(now)) / HOUR_MS) as usize;
    let mut costs = vec![100.0; energy::HOURS_PER_YEAR];
    costs[(hour + 2) % energy::HOURS_PER_YEAR] = 10.0;
    sched::defer::DeferralGate::new(costs, 0)
}

async fn deferrable_job_waits_for_its_hour(db: Db) {
    let place = Place::new(db).await;
    let s =
        TestServer::start_tuned(&place, common::fleet(), |c| c.deferral = Some(gate_with_a_cheap_hour_ahead())).await;
    let acme = s.tenant("acme", None).await;
    let held =
        s.submit(&acme, json!({"command": "sleep", "args": ["1"], "gpus_per_node": 1, "deferrable": true})).await;
    let now = s.submit(&acme, json!({"command": "sleep", "args": ["1"], "gpus_per_node": 1})).await;
    let (held, now) = (held["id"].as_i64().unwrap(), now["id"].as_i64().unwrap());
    // The GPUs are free: the plain job runs and ends, the deferrable one waits for its hour.
    s.wait_state(&acme, now, "succeeded").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.job(&acme, held).await["state"], "pending");
    s.stop().await;

    // The same store under a flat price: nothing to wait for, the held job runs.
    let flat = sched::defer::DeferralGate::new(vec![60.0; energy::HOURS_PER_YEAR], 0);
    let s = TestServer::start_tuned(&place, common::fleet(), |c| c.deferral = Some(flat)).await;
    s.wait_state(&acme, held, "succeeded").await;
    s.stop().await;
    place.cleanup().await;
}
both_backends!(defer_tests, deferrable_job_waits_for_its_hour);

#[test]
fn years_start_on_the_first_of_january_utc() {
    // 2026-12-01T17:00:00Z and 2024-02-29T12:00:00Z (a leap year).
    assert_eq!(server::year_start_ms(1_796_144_400_000), 1_767_225_600_000);
    assert_eq!(server::year_start_ms(1_767_225_600_000), 1_767_225_600_000);
    assert_eq!(server::year_start_ms(1_709_208_000_000), 1_704_067_200_000);
    assert_eq!(server::year_start_ms(-5), 0);
}
