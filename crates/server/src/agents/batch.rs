//! Batched heartbeats: an agent process serving many nodes, what wakes its held call, and which
//! of its nodes changed since it last looked.

use super::*;

/// An agent process that heartbeats for many nodes at once: what wakes its held call, and which
/// of its nodes have something to do since it last looked.
#[derive(Default)]
pub(crate) struct BatchSession {
    pub notify: Notify,
    pub(super) dirty: Mutex<std::collections::HashSet<String>>,
    /// Calls received; a held one that a newer one superseded ends.
    pub calls: std::sync::atomic::AtomicU64,
    /// Answers given and not yet known received, by number, with the nodes they were for: the
    /// process may have dropped such a call (to report an end at once), so later calls plan
    /// those nodes again, from their latest report, until it says it got them.
    answered: Mutex<BTreeMap<u64, Vec<String>>>,
    next_answer: std::sync::atomic::AtomicU64,
}

impl BatchSession {
    /// A call begins, the process having received every answer up to `last_answer`: the nodes
    /// of later answers are planned again.
    pub fn begin_call(&self, last_answer: u64) {
        let mut answered = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        let later = answered.split_off(&last_answer.saturating_add(1));
        // The process names every answer it gets with its next call: an earlier one still here
        // never reached it. Its nodes are planned again once more, then forgotten; later ones
        // (perhaps still on their way) are planned again until named.
        let mut again: Vec<String> = answered
            .iter()
            .filter(|(number, _)| **number != last_answer)
            .flat_map(|(_, nodes)| nodes.clone())
            .collect();
        again.extend(later.values().flatten().cloned());
        *answered = later;
        drop(answered);
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).extend(again);
    }

    /// An answer goes out for `nodes`: its number.
    pub fn answering(&self, nodes: Vec<String>) -> u64 {
        let number = self.next_answer.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if !nodes.is_empty() {
            self.answered.lock().unwrap_or_else(|e| e.into_inner()).insert(number, nodes);
        }
        number
    }

    /// The nodes that changed since the last call, forgotten here.
    pub fn take_dirty(&self) -> Vec<String> {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).drain().collect()
    }
}

impl RemoteNodes {
    /// The session of agent process `agent_id`, made on its first call.
    pub(crate) fn session(&self, agent_id: &str) -> Arc<BatchSession> {
        let mut inner = self.lock();
        if inner.sessions.len() > 100_000 {
            // Ids of processes long gone: their nodes attach again on their next call.
            inner.sessions.clear();
        }
        inner.sessions.entry(agent_id.to_string()).or_default().clone()
    }

    /// `node` is served by `session` from now on.
    pub(crate) fn attach(&self, node: &str, session: &Arc<BatchSession>) {
        let mut inner = self.lock();
        let slot = inner.slots.entry(node.to_string()).or_default();
        if !slot.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            slot.session = Some(session.clone());
        }
    }

    /// The node's last report, if it made one.
    pub(crate) fn last_beat(&self, node: &str) -> Option<api::Heartbeat> {
        self.lock().slots.get(node).and_then(|s| s.last_beat.clone())
    }
}
