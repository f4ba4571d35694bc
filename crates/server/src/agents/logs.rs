//! Log requests: pieces of a run's output asked of its node through its heartbeat answers.

use super::*;

/// A log request sent again if its answer has not come this long after it went out (the
/// heartbeat answer that carried it may have been dropped).
pub(super) const LOG_RESEND: Duration = Duration::from_secs(2);

impl RemoteNodes {
    /// Asks a node's agent for a piece of a run's output, through the node's next heartbeat
    /// answer, and waits up to `within` for it.
    pub(crate) async fn fetch_log(
        &self,
        node: &str,
        run: RunKey,
        stream: api::LogStream,
        offset: u64,
        limit: u64,
        within: Duration,
    ) -> Result<api::LogChunk, String> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut inner = self.lock();
            inner.next_log_id += 1;
            let id = inner.next_log_id;
            let Some(slot) = inner.slots.get_mut(node).filter(|s| s.lease_until.is_some()) else {
                return Err(format!("node {node} has no live agent"));
            };
            slot.log_requests.push((api::LogRequest { id, run, stream, offset, limit }, None));
            slot.wake(node);
            inner.log_waiters.insert(id, (node.to_string(), tx));
            id
        };
        let answer = tokio::time::timeout(within, rx).await;
        let mut inner = self.lock();
        inner.log_waiters.remove(&id);
        if let Some(slot) = inner.slots.get_mut(node) {
            slot.log_requests.retain(|(r, _)| r.id != id);
        }
        match answer {
            Ok(Ok(chunk)) => Ok(chunk),
            _ => Err(format!("node {node} did not send the output within {} s", within.as_secs())),
        }
    }

    /// Takes a node's answer to one of its log requests; answers for another node's request,
    /// or for one no longer awaited, are dropped.
    pub(crate) fn log_answer(&self, node: &str, chunk: api::LogChunk) {
        let mut inner = self.lock();
        if inner.log_waiters.get(&chunk.id).is_some_and(|(n, _)| n == node)
            && let Some((_, tx)) = inner.log_waiters.remove(&chunk.id)
        {
            if let Some(slot) = inner.slots.get_mut(node) {
                slot.log_requests.retain(|(r, _)| r.id != chunk.id);
            }
            let _ = tx.send(chunk);
        }
    }
}
