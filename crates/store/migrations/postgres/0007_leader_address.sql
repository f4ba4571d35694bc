-- Where the leader serves its API: replicas that do not lead forward to it what only the leader
-- can answer (live node figures, job output, power caps).
ALTER TABLE leader_lease ADD COLUMN address TEXT;
