//! Replicas on one PostgreSQL database tell one another of their writes with `NOTIFY`, sent in
//! the transaction of the write: a notice is delivered if and only if its write committed, and
//! after it. A replica that does not lead announces what the leader must act on (jobs it stored
//! or cancelled, quotas it set); the leader announces that jobs changed, so that the event
//! streams of every replica's clients read the store at once rather than at their next poll.
//!
//! Notices are wake-ups, never the record: the store is. A listener whose connection dropped
//! gets [`Notice::Missed`] and must read the store again, and a new leader, which starts
//! listening before it reads the store, misses nothing.

use crate::{Result, StoreError};
use sqlx::postgres::PgListener;

/// Announced by replicas that do not lead, for the leader.
pub(crate) const WRITES_CHANNEL: &str = "drome_writes";
/// Announced by the leader, for every replica's event streams.
pub(crate) const EVENTS_CHANNEL: &str = "drome_events";
/// PostgreSQL refuses payloads of 8,000 bytes or more: ids go in pieces well below that.
const MAX_PAYLOAD_BYTES: usize = 7_000;

/// What another replica announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Jobs stored, pending, by a replica that does not lead.
    Submitted(Vec<i64>),
    /// Jobs a replica that does not lead moved to cancelled.
    Cancelled(Vec<i64>),
    /// A tenant whose GPU quota a replica that does not lead set.
    QuotaSet(i64),
    /// A tenant whose token any replica rotated, revoked or removed: every replica forgets the
    /// tokens it holds for it.
    TokensChanged(i64),
    /// The leader recorded changes of jobs.
    JobsChanged,
    /// The connection to the database was lost (and is made again at the next call): what was
    /// announced meanwhile is unknown, so the store must be read again.
    Missed,
}

/// What a write announces on [`WRITES_CHANNEL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteKind {
    Submitted,
    Cancelled,
    QuotaSet,
    TokensChanged,
}

impl WriteKind {
    fn tag(self) -> char {
        match self {
            WriteKind::Submitted => 's',
            WriteKind::Cancelled => 'c',
            WriteKind::QuotaSet => 'q',
            WriteKind::TokensChanged => 't',
        }
    }
}

/// The payloads that announce `ids`: `s:1,2,3`, as few as fit.
pub(crate) fn payloads(kind: WriteKind, ids: &[i64]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for id in ids {
        if current.len() > MAX_PAYLOAD_BYTES {
            out.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push(kind.tag());
            current.push(':');
        } else {
            current.push(',');
        }
        current.push_str(&id.to_string());
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The notice a payload on `channel` carries; `None` for one this version does not know.
pub(crate) fn parse(channel: &str, payload: &str) -> Option<Notice> {
    if channel == EVENTS_CHANNEL {
        return Some(Notice::JobsChanged);
    }
    if channel != WRITES_CHANNEL {
        return None;
    }
    let (tag, rest) = payload.split_once(':')?;
    let ids: Vec<i64> = rest.split(',').map(str::parse).collect::<std::result::Result<_, _>>().ok()?;
    match tag {
        "s" => Some(Notice::Submitted(ids)),
        "c" => Some(Notice::Cancelled(ids)),
        "q" => ids.first().map(|&id| Notice::QuotaSet(id)),
        "t" => ids.first().map(|&id| Notice::TokensChanged(id)),
        _ => None,
    }
}

/// A connection of its own that receives the replicas' notices ([`crate::Store::listen`]).
pub struct Listener(PgListener);

impl Listener {
    pub(crate) async fn connect(url: &str) -> Result<Listener> {
        let mut listener = PgListener::connect(url).await?;
        listener.listen_all([WRITES_CHANNEL, EVENTS_CHANNEL]).await?;
        Ok(Listener(listener))
    }

    /// The next notice; [`Notice::Missed`] once after the connection was lost. Cancel-safe.
    pub async fn next(&mut self) -> Result<Notice> {
        loop {
            match self.0.try_recv().await.map_err(StoreError::Db)? {
                None => return Ok(Notice::Missed),
                Some(n) => {
                    if let Some(notice) = parse(n.channel(), n.payload()) {
                        return Ok(notice);
                    }
                    tracing::debug!(channel = n.channel(), "notice not understood; ignored");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_in_pieces_postgres_accepts() {
        let ids: Vec<i64> = (1_000_000_000..1_000_003_000).collect();
        let pieces = payloads(WriteKind::Submitted, &ids);
        assert!(pieces.len() > 1, "3,000 ids of 10 digits do not fit one payload");
        let mut back = Vec::new();
        for p in &pieces {
            assert!(p.len() < 8_000, "{} bytes", p.len());
            match parse(WRITES_CHANNEL, p) {
                Some(Notice::Submitted(ids)) => back.extend(ids),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, ids);
        assert_eq!(parse(WRITES_CHANNEL, "q:7"), Some(Notice::QuotaSet(7)));
        assert_eq!(parse(WRITES_CHANNEL, "t:8"), Some(Notice::TokensChanged(8)));
        assert_eq!(parse(WRITES_CHANNEL, "c:3,4"), Some(Notice::Cancelled(vec![3, 4])));
        assert_eq!(parse(EVENTS_CHANNEL, ""), Some(Notice::JobsChanged));
        assert_eq!(parse(WRITES_CHANNEL, "x:1"), None);
        assert_eq!(parse(WRITES_CHANNEL, "s:1,oops"), None);
        assert!(payloads(WriteKind::Cancelled, &[]).is_empty());
    }
}
