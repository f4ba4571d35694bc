-- Jobs sent by a federation endpoint (1): they start only while the site holds a federation
-- lease, so a job the federation moved away from a site cut off from it never starts there.
ALTER TABLE jobs ADD COLUMN federated BIGINT NOT NULL DEFAULT 0;
