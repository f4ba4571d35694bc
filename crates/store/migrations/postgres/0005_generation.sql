-- A job's start count is the generation that fences its runs: a run of any other generation is
-- stale. The column says so.
ALTER TABLE jobs RENAME COLUMN attempts TO generation;
