-- The control plane's replicas, each seen a moment ago: every server records itself here a few
-- times a lease, so any replica can say which others there are and where they serve.
CREATE TABLE replicas (
    name TEXT PRIMARY KEY NOT NULL,
    address TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    seen_ms BIGINT NOT NULL
);
