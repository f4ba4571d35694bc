//! The dispatch rules, on hand-made facts and on random ones.

use dispatch::{Choice, Dataset, DispatchPolicy, DispatchWeights, JobNeeds, Reason, Refusal, SiteFacts, choose};
use proptest::prelude::*;

fn site(name: &str, region: &str, free: f64) -> SiteFacts {
    SiteFacts {
        name: name.into(),
        region: Some(region.into()),
        reachable: true,
        could_ever_fit: true,
        fits_now: free >= 8.0,
        total_gpus: 100.0,
        free_gpus: free,
        queued_gpus: 0.0,
        price_eur_per_mwh: 60.0,
        co2_g_per_kwh: 30.0,
        heat_demand_watts: 0.0,
        heat_supplied_watts: 0.0,
        fiber_gbps: Some(100.0),
    }
}

fn job(gpus: f64) -> JobNeeds {
    JobNeeds { gpus, ..JobNeeds::default() }
}

fn pick(policy: DispatchPolicy, job: &JobNeeds, sites: &[SiteFacts]) -> Choice {
    choose(policy, &DispatchWeights::default(), job, sites).unwrap()
}

#[test]
fn each_policy_ranks_by_its_own_figure() {
    let mut sites = vec![site("lyon", "FR-ARA", 50.0), site("valence", "FR-ARA", 20.0), site("fos", "FR-PAC", 30.0)];
    assert_eq!(pick(DispatchPolicy::Capacity, &job(8.0), &sites).site, 0);

    sites[2].price_eur_per_mwh = 40.0;
    let c = pick(DispatchPolicy::PriceCarbon, &job(8.0), &sites);
    assert_eq!(c.site, 2);
    assert!(matches!(c.reason, Reason::Cheapest { candidates: 3, .. }), "{:?}", c.reason);
    // Carbon is priced in: 400 g/kWh at 80 EUR/t adds 32 EUR/MWh.
    sites[2].co2_g_per_kwh = 400.0;
    assert_eq!(pick(DispatchPolicy::PriceCarbon, &job(8.0), &sites).site, 0);

    sites[1].heat_demand_watts = 5e6;
    sites[1].heat_supplied_watts = 2e6;
    let c = pick(DispatchPolicy::Heat, &job(8.0), &sites);
    assert_eq!(c.site, 1);
    assert_eq!(c.reason.to_string(), "fits now, its heat network wants 3.00 MW more of 3 sites");
    // No network wants heat: capacity decides.
    sites[1].heat_supplied_watts = 5e6;
    assert_eq!(pick(DispatchPolicy::Heat, &job(8.0), &sites).site, 0);

    let mut with_data = job(8.0);
    with_data.dataset = Some(Dataset { site: "fos".into(), bytes: 1_000_000_000_000 });
    let c = pick(DispatchPolicy::Data, &with_data, &sites);
    assert_eq!((c.site, c.transfer_s), (2, 0.0));
    // Elsewhere, the terabyte crosses a 100 Gbit/s link in 80 s.
    let c = pick(DispatchPolicy::Capacity, &with_data, &sites);
    assert_eq!(c.site, 0);
    assert!((c.transfer_s - 80.0).abs() < 1e-9, "{}", c.transfer_s);
}

#[test]
fn constraints_and_reachability_come_before_any_ranking() {
    let mut sites = vec![site("lyon", "FR-ARA", 50.0), site("valence", "FR-ARA", 20.0), site("fos", "FR-PAC", 30.0)];
    let mut bound = job(8.0);
    bound.site = Some("valence".into());
    assert_eq!(pick(DispatchPolicy::Capacity, &bound, &sites).site, 1);
    let mut south = job(8.0);
    south.region = Some("fr-pac".into());
    assert_eq!(pick(DispatchPolicy::Capacity, &south, &sites).site, 2);

    sites[1].reachable = false;
    let e = choose(DispatchPolicy::Capacity, &DispatchWeights::default(), &bound, &sites).unwrap_err();
    assert_eq!(e, Refusal::NoneReachable("valence".into()));
    sites[1].could_ever_fit = false;
    let e = choose(DispatchPolicy::Capacity, &DispatchWeights::default(), &bound, &sites).unwrap_err();
    assert!(matches!(e, Refusal::NoSite(_)), "{e}");
    assert!(e.to_string().contains("being site valence"), "{e}");

    // Fits nowhere now: the least backlog per GPU.
    let mut full = vec![site("a", "FR-ARA", 0.0), site("b", "FR-ARA", 0.0)];
    full[0].queued_gpus = 50.0;
    full[1].queued_gpus = 10.0;
    let c = pick(DispatchPolicy::Heat, &job(8.0), &full);
    assert_eq!(c.site, 1);
    assert!(matches!(c.reason, Reason::LeastBacklog { .. }));
}

fn arb_site(i: usize) -> impl Strategy<Value = SiteFacts> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0u8..3,
        0.0f64..100.0,
        0.0f64..200.0,
        0.0f64..150.0,
        0.0f64..500.0,
        0.0f64..10e6,
        prop::option::of(1.0f64..400.0),
    )
        .prop_map(move |(reachable, fits, ever, region, free, queued, price, co2, heat, fiber)| SiteFacts {
            name: format!("s{i}"),
            region: Some(format!("R{region}")),
            reachable,
            could_ever_fit: ever,
            fits_now: fits && ever,
            total_gpus: 100.0,
            free_gpus: free,
            queued_gpus: queued,
            price_eur_per_mwh: price,
            co2_g_per_kwh: co2,
            heat_demand_watts: heat,
            heat_supplied_watts: 5e6,
            fiber_gbps: fiber,
        })
}

fn arb_sites() -> impl Strategy<Value = Vec<SiteFacts>> {
    (1usize..7).prop_flat_map(|n| (0..n).map(arb_site).collect::<Vec<_>>())
}

proptest! {
    #[test]
    fn the_chosen_site_is_allowed_answers_and_fits_if_any_does(
        sites in arb_sites(),
        policy in prop::sample::select(DispatchPolicy::ALL.to_vec()),
        bound_site in prop::option::of(0usize..7),
        bound_region in prop::option::of(0u8..3),
        data_at in prop::option::of(0usize..7),
    ) {
        let job = JobNeeds {
            gpus: 8.0,
            site: bound_site.map(|i| format!("s{i}")),
            region: bound_region.map(|r| format!("R{r}")),
            dataset: data_at.map(|i| Dataset { site: format!("s{i}"), bytes: 5_000_000_000_000 }),
        };
        let ok: Vec<usize> = (0..sites.len()).filter(|&i| dispatch::allowed(&job, &sites[i])).collect();
        match choose(policy, &DispatchWeights::default(), &job, &sites) {
            Ok(c) => {
                prop_assert!(ok.contains(&c.site));
                prop_assert!(sites[c.site].reachable);
                let any_fits = ok.iter().any(|&i| sites[i].reachable && sites[i].fits_now);
                prop_assert_eq!(sites[c.site].fits_now, any_fits);
                prop_assert!(c.transfer_s.is_finite() && c.transfer_s >= 0.0);
                if let Some(s) = &job.site { prop_assert_eq!(&sites[c.site].name, s); }
                // Same facts, same choice.
                prop_assert_eq!(choose(policy, &DispatchWeights::default(), &job, &sites), Ok(c));
            }
            Err(Refusal::NoSite(_)) => prop_assert!(ok.is_empty()),
            Err(Refusal::NoneReachable(_)) => {
                prop_assert!(!ok.is_empty());
                prop_assert!(ok.iter().all(|&i| !sites[i].reachable));
            }
        }
    }
}
