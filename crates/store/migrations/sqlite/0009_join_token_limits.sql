-- Join tokens with limits: how many joins are left (NULL: any number, for tokens made before),
-- when the token expires (NULL: never), the one node it may join (NULL: any), and when the
-- admin revoked it.
ALTER TABLE join_tokens ADD COLUMN uses_left BIGINT;
ALTER TABLE join_tokens ADD COLUMN expires_ms BIGINT;
ALTER TABLE join_tokens ADD COLUMN node TEXT;
ALTER TABLE join_tokens ADD COLUMN revoked_ms BIGINT;
