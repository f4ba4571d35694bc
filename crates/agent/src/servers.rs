//! The servers an agent may talk to: the replicas of one control plane. It talks to one at a
//! time, the leader as far as it knows, and moves on to the next when that one does not answer
//! or answers that it does not lead (503): a standby does not listen, and a deposed leader
//! refuses, so the agent finds the leader within a few calls of a failover.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Servers {
    urls: Vec<String>,
    current: AtomicUsize,
}

impl Servers {
    /// The servers of `list`, base URLs separated by commas (`http://a:8420,http://b:8420`).
    pub fn parse(list: &str) -> Arc<Servers> {
        let mut urls: Vec<String> =
            list.split(',').map(|u| u.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty()).collect();
        if urls.is_empty() {
            urls.push(list.trim().to_string());
        }
        Arc::new(Servers { urls, current: AtomicUsize::new(0) })
    }

    /// The server to talk to now, and its place in the list (for [`Servers::failed`]).
    pub fn current(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Relaxed) % self.urls.len().max(1);
        (i, self.urls.get(i).map_or("", String::as_str))
    }

    /// The server at `index` did not answer, or does not lead: the next one is tried from now
    /// on (unless another call moved on already).
    pub fn failed(&self, index: usize) {
        if self.urls.len() < 2 {
            return;
        }
        let next = (index + 1) % self.urls.len();
        if self.current.compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::info!(from = %self.urls[index], to = %self.urls[next], "server does not answer or lead; trying the next");
        }
    }

    /// Whether an answer of this status means the server is not the one to talk to.
    pub fn not_leading(status: reqwest::StatusCode) -> bool {
        status == reqwest::StatusCode::SERVICE_UNAVAILABLE
    }
}

#[cfg(test)]
mod tests {
    use super::Servers;

    #[test]
    fn moves_on_once_per_failure_and_wraps() {
        let s = Servers::parse("http://a:1/, http://b:2,,");
        assert_eq!(s.current(), (0, "http://a:1"));
        s.failed(0);
        s.failed(0); // a second caller that saw the same failure does not skip b
        assert_eq!(s.current(), (1, "http://b:2"));
        s.failed(1);
        assert_eq!(s.current(), (0, "http://a:1"));
        let one = Servers::parse("http://only:1");
        one.failed(0);
        assert_eq!(one.current(), (0, "http://only:1"));
    }
}
