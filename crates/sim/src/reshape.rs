//! Reshaping a trace for a what-if run: loop it to cover a longer span (a year of operation from
//! a few months of history), lay several copies over each other to load a bigger fleet, and mark
//! a share of the jobs deferrable. Ids come out `0..n` in the order [`crate::simulate`] expects.

use model::{GPU_MILLI_PER_GPU, GpuRequest, SimDuration, SimTime, TenantId, Workload, WorkloadId};

/// First submit to last submit-plus-duration, at least one second.
pub fn trace_span(workloads: &[Workload]) -> SimDuration {
    let first = workloads.iter().map(|w| w.submit_time).min().unwrap_or(SimTime::ZERO);
    let last = workloads.iter().map(|w| w.submit_time + w.duration.unwrap_or(SimDuration::ZERO)).max();
    SimDuration(last.map_or(0, |l| l.since(first).as_millis()).max(1000))
}

fn renumber(mut v: Vec<Workload>) -> Vec<Workload> {
    v.sort_by_key(|w| (w.submit_time, w.id));
    for (i, w) in v.iter_mut().enumerate() {
        w.id = WorkloadId(i as u32);
    }
    v
}

/// The trace repeated back to back, each repeat shifted by the span of submits, until its submits
/// cover `span`. Repeats keep their tenants; names get a `~k` suffix.
pub fn loop_to(workloads: &[Workload], span: SimDuration) -> Vec<Workload> {
    let Some(first) = workloads.iter().map(|w| w.submit_time).min() else { return Vec::new() };
    let last = workloads.iter().map(|w| w.submit_time).max().unwrap_or(first);
    // The period: submits span plus the mean gap, so a repeat does not land on the last submit.
    let gap = last.since(first).as_millis() / workloads.len().max(1) as u64;
    let period = (last.since(first).as_millis() + gap).max(1000);
    let end = first.as_millis().saturating_add(span.as_millis());
    let mut out = Vec::new();
    for k in 0u64.. {
        let shift = k * period;
        if first.as_millis() + shift >= end {
            break;
        }
        for w in workloads {
            let t = w.submit_time.as_millis() + shift;
            if t >= end {
                continue;
            }
            let mut c = w.clone();
            c.submit_time = SimTime(t);
            if k > 0 {
                c.name = format!("{}~{k}", w.name);
            }
            out.push(c);
        }
        if out.len() > u32::MAX as usize / 2 {
            break;
        }
    }
    renumber(out)
}

/// `copies` copies of the trace laid over each other, copy `c` shifted by `c / copies` of the
/// submit span (wrapping round), so a fleet `copies` times bigger sees the same offered load.
/// Copy `c` of tenant `t` is tenant `t + c * tenants`.
pub fn overlay(workloads: &[Workload], copies: u32) -> Vec<Workload> {
    let copies = copies.max(1);
    let Some(first) = workloads.iter().map(|w| w.submit_time.as_millis()).min() else { return Vec::new() };
    let last = workloads.iter().map(|w| w.submit_time.as_millis()).max().unwrap_or(first);
    let period = (last - first).max(1);
    let tenants = workloads.iter().map(|w| w.tenant.0 + 1).max().unwrap_or(1);
    let mut out = Vec::with_capacity(workloads.len() * copies as usize);
    for c in 0..copies {
        let shift = period * u64::from(c) / u64::from(copies);
        for w in workloads {
            let mut x = w.clone();
            let rel = (w.submit_time.as_millis() - first + shift) % (period + 1);
            x.submit_time = SimTime(first + rel);
            x.tenant = TenantId(w.tenant.0 + c * tenants);
            if c > 0 {
                x.name = format!("{}#{c}", w.name);
            }
            out.push(x);
        }
    }
    renumber(out)
}

/// Marks about `share` of the jobs deferrable (those already marked stay so), chosen by a hash of
/// `seed` and the job's id: the same seed marks the same jobs.
pub fn mark_deferrable(workloads: &mut [Workload], share: f64, seed: u64) {
    let share = if share.is_finite() { share.clamp(0.0, 1.0) } else { 0.0 };
    for w in workloads {
        let u = (splitmix64(seed ^ (u64::from(w.id.0) << 1 | 1)) >> 11) as f64 / (1u64 << 53) as f64;
        if u < share {
            w.deferrable = true;
        }
    }
}

/// Every job asks `factor` times its GPUs (a share that grows past one GPU becomes whole GPUs),
/// shaped as gangs of nodes of `node_gpus`: the history of a small cluster as the work of labs
/// training on thousands of GPUs, the same arrivals and durations.
pub fn scale_gpus(workloads: &mut [Workload], factor: u32, node_gpus: u32) {
    if factor <= 1 {
        return;
    }
    for w in workloads {
        let milli = w.gpu.total_gpu_milli().saturating_mul(u64::from(factor));
        w.gpu = match w.gpu {
            GpuRequest::None => GpuRequest::None,
            _ if milli < u64::from(GPU_MILLI_PER_GPU) => GpuRequest::fraction(milli as u32),
            _ => GpuRequest::whole_gpus(
                u32::try_from(milli.div_ceil(u64::from(GPU_MILLI_PER_GPU))).unwrap_or(u32::MAX),
                node_gpus,
            ),
        };
    }
}

/// SplitMix64: a seeded hash for draws that must not depend on anything but the seed.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_keeps_arrivals_and_multiplies_gpus() {
        let mut v = trace();
        v[0].gpu = GpuRequest::Fraction { gpu_milli: 250 };
        v[1].gpu = GpuRequest::Gang { nodes: 1, gpus_per_node: 3 };
        let before = v.clone();
        scale_gpus(&mut v, 64, 8);
        assert_eq!(v[0].gpu, GpuRequest::Gang { nodes: 2, gpus_per_node: 8 });
        assert_eq!(v[1].gpu, GpuRequest::Gang { nodes: 24, gpus_per_node: 8 });
        assert!(v.iter().zip(&before).all(|(a, b)| a.submit_time == b.submit_time && a.duration == b.duration));
        scale_gpus(&mut v, 1, 8);
        assert_eq!(v[1].gpu, GpuRequest::Gang { nodes: 24, gpus_per_node: 8 });
    }

    fn trace() -> Vec<Workload> {
        (0..10)
            .map(|i| {
                Workload::gpu_job(
                    i,
                    SimTime::from_secs(u64::from(i) * 100),
                    GpuRequest::whole_gpus(1 + i % 3, 8),
                    Some(SimDuration::from_secs(50)),
                )
            })
            .collect()
    }

    #[test]
    fn looping_covers_the_span_with_whole_and_partial_repeats() {
        let t = trace();
        // Submits span 900 s plus a 90 s mean gap: a period of 990 s.
        let looped = loop_to(&t, SimDuration::from_secs(2500));
        assert_eq!(looped.len(), 26);
        assert!(looped.iter().enumerate().all(|(i, w)| w.id.0 as usize == i));
        assert!(looped.windows(2).all(|p| p[0].submit_time <= p[1].submit_time));
        assert_eq!(looped[10].submit_time, SimTime::from_secs(990));
        assert_eq!(looped[10].name, "job-0~1");
        assert!(looped.iter().all(|w| w.submit_time < SimTime::from_secs(2500)));
    }

    #[test]
    fn overlays_multiply_the_load_and_the_tenants() {
        let t = trace();
        let o = overlay(&t, 3);
        assert_eq!(o.len(), 30);
        let gpus = |v: &[Workload]| v.iter().map(|w| w.gpu.total_gpus()).sum::<f64>();
        assert_eq!(gpus(&o), 3.0 * gpus(&t));
        let tenants: std::collections::BTreeSet<u32> = o.iter().map(|w| w.tenant.0).collect();
        assert_eq!(tenants.len(), 3);
        assert!(o.iter().all(|w| w.submit_time <= SimTime::from_secs(900)));
    }

    #[test]
    fn marking_is_seeded_and_near_the_share() {
        let mut a: Vec<Workload> =
            (0..10_000).map(|i| Workload::gpu_job(i, SimTime(0), GpuRequest::None, None)).collect();
        let mut b = a.clone();
        mark_deferrable(&mut a, 0.3, 7);
        mark_deferrable(&mut b, 0.3, 7);
        assert_eq!(a, b);
        let n = a.iter().filter(|w| w.deferrable).count();
        assert!((2_800..3_200).contains(&n), "{n}");
    }
}
