//! The leader's lease. A server schedules and talks to agents only while it holds the lease in
//! the store, under the lease's epoch: all its writes are fenced by it
//! ([`store::Store::fenced`]), so once another replica takes over, whatever a deposed leader
//! still tries to write is refused. The holder renews a third of the lease ahead and steps down
//! (its scheduler stops, its [`crate::Running::wait`] returns the loss) when the lease is gone.

use std::time::{Duration, Instant};
use store::{Backend, Lease, Store, StoreError};

/// The lease this server holds.
#[derive(Clone, Debug)]
pub(crate) struct Leadership {
    pub holder: String,
    pub epoch: i64,
    pub lease: Duration,
}

/// A name for this replica that another process never repeats: host, process, random.
pub(crate) fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let nonce: String = crate::auth::new_token().unwrap_or_default().chars().rev().take(8).collect();
    format!("{}:{}:{nonce}", if host.is_empty() { "drome" } else { host }, std::process::id())
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

/// Takes the lease if it is free. On SQLite, where one server runs by design, it takes it at
/// once from any earlier holder (one killed before it could give it up), whose writes are
/// fenced from then on. On PostgreSQL, `None` while another replica's lease runs.
pub(crate) async fn try_acquire(
    store: &Store,
    holder: &str,
    address: &str,
    lease: Duration,
) -> Result<Option<Leadership>, StoreError> {
    let now = crate::now_ms();
    let got = match store.backend() {
        Backend::Sqlite => Some(store.take_lease(holder, Some(address), now, lease_ms(lease)).await?),
        Backend::Postgres => store.acquire_lease(holder, Some(address), now, lease_ms(lease)).await?,
    };
    Ok(got.map(|Lease { epoch, .. }| {
        tracing::info!(holder, epoch, "leading: this server schedules");
        Leadership { holder: holder.to_string(), epoch, lease }
    }))
}

/// Waits until this server holds the lease ([`try_acquire`] every quarter of a lease).
pub(crate) async fn acquire(
    store: &Store,
    holder: &str,
    address: &str,
    lease: Duration,
) -> Result<Leadership, StoreError> {
    loop {
        if let Some(l) = try_acquire(store, holder, address, lease).await? {
            return Ok(l);
        }
        tokio::time::sleep(lease / 4).await;
    }
}

/// The address other replicas reach a server listening on `addr` at: the host's name when it
/// listens on every interface.
pub(crate) fn default_address(addr: std::net::SocketAddr, scheme: &str) -> String {
    if addr.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = host.trim();
        if !host.is_empty() {
            return format!("{scheme}://{host}:{}", addr.port());
        }
    }
    format!("{scheme}://{addr}")
}

/// Renews the lease a third of its term ahead, until it is lost: another replica took it, or
/// no renewal got through for a whole term (the store unreachable). Returns why.
pub(crate) async fn keep(store: Store, l: Leadership, metrics: std::sync::Arc<crate::metrics::Metrics>) -> String {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(l.lease / 3).await;
        let asked = Instant::now();
        let answer = store.renew_lease(&l.holder, l.epoch, crate::now_ms(), lease_ms(l.lease)).await;
        metrics.lease_renew_seconds.observe(asked.elapsed().as_secs_f64());
        match answer {
            Ok(true) => renewed = asked,
            Ok(false) => {
                let by = store.lease().await.ok().flatten().map(|n| format!(" by {} (epoch {})", n.holder, n.epoch));
                return format!("the lease of epoch {} was taken over{}", l.epoch, by.unwrap_or_default());
            }
            Err(e) => {
                tracing::warn!(error = %e, epoch = l.epoch, "cannot renew the leader's lease");
                if renewed.elapsed() >= l.lease {
                    return format!("the lease of epoch {} could not be renewed for {:?}: {e}", l.epoch, l.lease);
                }
            }
        }
    }
}

/// The task that renews the lease ([`keep`]); aborted if dropped before the server is up, so a
/// start-up that fails does not go on holding the lease.
pub(crate) struct Keeper(Option<tokio::task::JoinHandle<String>>);

impl Keeper {
    pub(crate) fn spawn(store: Store, l: Leadership, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Keeper {
        Keeper(Some(tokio::spawn(keep(store, l, metrics))))
    }

    /// Waits until the lease is lost; why.
    pub(crate) async fn lost(mut self) -> String {
        match self.0.take() {
            Some(task) => task.await.unwrap_or_else(|e| format!("the lease keeper stopped: {e}")),
            None => "the lease keeper is gone".into(),
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}
