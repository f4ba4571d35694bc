//! What one tenant may ask of the API, so that a flooding tenant cannot starve the others:
//! a request rate (a token bucket per tenant, refilled continuously), event streams open at
//! once, and jobs waiting in the queue. Past a limit the answer is 429 with `Retry-After`.
//!
//! Per process: each replica counts what it serves. The admin and the agents are not limited
//! here (agents have their own protocol and bounds).

use crate::error::ApiError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits; 0 turns one off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TenantLimits {
    /// Requests a second a tenant may make, on average.
    pub requests_per_s: f64,
    /// Requests it may make at once after a quiet while.
    pub burst: f64,
    /// Event streams (`GET /v1/events`) a tenant may hold open at once.
    pub streams: u32,
    /// Jobs a tenant may have waiting (pending) at once.
    pub pending_jobs: u64,
    /// Requests of a tenant served at once (event streams and log requests aside); the others
    /// wait for a seat: a tenant's many connections cannot crowd the others out of the server.
    pub concurrency: u32,
}

impl TenantLimits {
    /// No limits: what a library user (tests, benchmarks) gets unless it asks.
    pub fn unlimited() -> TenantLimits {
        TenantLimits { requests_per_s: 0.0, burst: 0.0, streams: 0, pending_jobs: 0, concurrency: 0 }
    }
}

impl Default for TenantLimits {
    /// What `drome server` and `drome up` apply: 200 requests a second with bursts of 1,000,
    /// 16 event streams, 100,000 pending jobs, 4 requests served at once per tenant.
    fn default() -> Self {
        TenantLimits { requests_per_s: 200.0, burst: 1000.0, streams: 16, pending_jobs: 100_000, concurrency: 4 }
    }
}

#[derive(Default)]
struct Counts {
    /// Per tenant: tokens left and when they were counted.
    buckets: HashMap<i64, (f64, Instant)>,
    streams: HashMap<i64, u32>,
    /// Per tenant: pending jobs as last read from the store, and submissions accepted since.
    pending: HashMap<i64, (u64, u64)>,
}

/// The limits and what each tenant has used of them.
pub(crate) struct Limiter {
    limits: TenantLimits,
    counts: Mutex<Counts>,
    /// Per tenant, the seats its requests are served in.
    seats: Mutex<HashMap<i64, Arc<tokio::sync::Semaphore>>>,
}

impl Limiter {
    pub fn new(limits: TenantLimits) -> Limiter {
        Limiter { limits, counts: Mutex::default(), seats: Mutex::default() }
    }

    /// A seat for one request of `tenant_id`, held while it is served; waits while the tenant's
    /// seats are taken. `None` when requests are not limited so.
    pub async fn seat(&self, tenant_id: i64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let seats = self.limits.concurrency as usize;
        if seats == 0 {
            return None;
        }
        let semaphore = {
            let mut all = self.seats.lock().unwrap_or_else(|e| e.into_inner());
            if all.len() > 100_000 {
                // Tenants come and go: forget those with no request in flight.
                all.retain(|_, s| s.available_permits() < seats);
            }
            all.entry(tenant_id).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(seats))).clone()
        };
        semaphore.acquire_owned().await.ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One request of `tenant_id` now: refused when its bucket is empty, with how long until a
    /// token is back.
    pub fn request(&self, tenant_id: i64) -> Result<(), ApiError> {
        self.request_at(tenant_id, Instant::now())
    }

    fn request_at(&self, tenant_id: i64, now: Instant) -> Result<(), ApiError> {
        let TenantLimits { requests_per_s: rate, burst, .. } = self.limits;
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = burst.max(1.0);
        let mut counts = self.lock();
        let (tokens, at) = counts.buckets.entry(tenant_id).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - *tokens) / rate);
        Err(ApiError::TooManyRequests {
            message: format!("more than {rate} requests a second (bursts of {burst}): slow down"),
            retry_after: wait,
        })
    }

    /// An event stream opened by `tenant_id`; it counts until the guard is dropped.
    pub fn open_stream(self: &Arc<Self>, tenant_id: i64) -> Result<StreamGuard, ApiError> {
        let max = self.limits.streams;
        let mut counts = self.lock();
        let open = counts.streams.entry(tenant_id).or_default();
        if max > 0 && *open >= max {
            return Err(ApiError::TooManyRequests {
                message: format!("{max} event streams are open already: close one first"),
                retry_after: Duration::from_secs(1),
            });
        }
        *open += 1;
        Ok(StreamGuard { limiter: self.clone(), tenant_id })
    }

    /// Whether `tenant_id` may queue one more job.
    pub fn may_queue(&self, tenant_id: i64) -> Result<(), ApiError> {
        let max = self.limits.pending_jobs;
        if max == 0 {
            return Ok(());
        }
        let counts = self.lock();
        let (stored, since) = counts.pending.get(&tenant_id).copied().unwrap_or_default();
        if stored + since >= max {
            return Err(ApiError::TooManyRequests {
                message: format!("{max} jobs of this tenant are waiting already: submit more once some start"),
                retry_after: Duration::from_secs(5),
            });
        }
        Ok(())
    }

    /// A job of `tenant_id` was queued.
    pub fn queued(&self, tenant_id: i64) {
        if self.limits.pending_jobs > 0 {
            self.lock().pending.entry(tenant_id).or_default().1 += 1;
        }
    }

    /// Whether pending jobs are counted at all (so worth reading from the store).
    pub fn counts_pending(&self) -> bool {
        self.limits.pending_jobs > 0
    }

    /// Pending jobs per tenant as the store holds them now: the counts start over from them.
    pub fn set_pending(&self, by_tenant: HashMap<i64, u64>) {
        let mut counts = self.lock();
        counts.pending = by_tenant.into_iter().map(|(t, n)| (t, (n, 0))).collect();
    }
}

/// An open event stream of a tenant; closing it (dropping this) gives its place back.
pub(crate) struct StreamGuard {
    limiter: Arc<Limiter>,
    tenant_id: i64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut counts = self.limiter.lock();
        if let Some(open) = counts.streams.get_mut(&self.tenant_id) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                counts.streams.remove(&self.tenant_id);
            }
        }
    }
}

/// Reads the tenants' pending jobs from the store every `period`, for [`Limiter::may_queue`].
pub(crate) async fn count_pending(store: store::Store, limiter: Arc<Limiter>, period: Duration) {
    loop {
        match store.pending_by_tenant().await {
            Ok(counts) => limiter.set_pending(counts),
            Err(e) => tracing::warn!(error = %e, "cannot count pending jobs"),
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_a_burst_through_then_the_rate() {
        let limiter = Limiter::new(TenantLimits { requests_per_s: 10.0, burst: 5.0, ..TenantLimits::unlimited() });
        let t0 = Instant::now();
        for _ in 0..5 {
            limiter.request_at(1, t0).unwrap();
        }
        let Err(ApiError::TooManyRequests { retry_after, .. }) = limiter.request_at(1, t0) else {
            panic!("the sixth request at once passed")
        };
        assert!(retry_after <= Duration::from_millis(100) && retry_after > Duration::ZERO, "{retry_after:?}");
        limiter.request_at(2, t0).expect("another tenant has its own bucket");
        limiter.request_at(1, t0 + Duration::from_millis(100)).expect("a token is back after 100 ms");
        assert!(limiter.request_at(1, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn a_tenant_past_its_seats_waits_and_the_others_do_not() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let limiter = Limiter::new(TenantLimits { concurrency: 2, ..TenantLimits::unlimited() });
            let first = limiter.seat(1).await.expect("a seat");
            let _second = limiter.seat(1).await.expect("a seat");
            let third = tokio::time::timeout(Duration::from_millis(50), limiter.seat(1)).await;
            assert!(third.is_err(), "a third request of the tenant waits");
            let other = tokio::time::timeout(Duration::from_millis(50), limiter.seat(2)).await;
            assert!(other.is_ok_and(|s| s.is_some()), "another tenant has seats of its own");
            drop(first);
            let third = tokio::time::timeout(Duration::from_millis(50), limiter.seat(1)).await;
            assert!(third.is_ok_and(|s| s.is_some()), "a seat given back is taken");
            let unlimited = Limiter::new(TenantLimits::unlimited());
            assert!(unlimited.seat(1).await.is_none());
        });
    }

    #[test]
    fn streams_and_pending_jobs_are_counted_per_tenant() {
        let limiter = Arc::new(Limiter::new(TenantLimits { streams: 2, pending_jobs: 3, ..TenantLimits::unlimited() }));
        let a = limiter.open_stream(1).unwrap();
        let _b = limiter.open_stream(1).unwrap();
        assert!(limiter.open_stream(1).is_err());
        drop(a);
        let _c = limiter.open_stream(1).expect("a closed stream gives its place back");
        limiter.set_pending(HashMap::from([(1, 2)]));
        limiter.may_queue(1).unwrap();
        limiter.queued(1);
        assert!(limiter.may_queue(1).is_err(), "2 stored and 1 since make 3");
        limiter.may_queue(2).unwrap();
        limiter.set_pending(HashMap::new());
        limiter.may_queue(1).expect("the store says none wait now");
    }
}
