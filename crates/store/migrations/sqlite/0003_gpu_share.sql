-- GPU shares: a job may ask for a share of one GPU, in thousandths (NULL: whole GPUs).
ALTER TABLE jobs ADD COLUMN gpu_milli BIGINT;
