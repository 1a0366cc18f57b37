-- Token revocations (inner/revoke_tokens): every token issued to one of `sessions` (on `platform`,
-- or on every platform when it is null) at or before `revoked_at` (milliseconds since the epoch, the
-- revoking node's clock) is refused. Nodes read new rows by `created_at` (the database's clock, so
-- every node reads the same window); rows older than the token TTL no longer refuse anything and
-- are deleted.
CREATE TABLE token_revocations (
  id          bigserial PRIMARY KEY,
  sessions    jsonb NOT NULL,
  platform    integer,
  revoked_at  bigint NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX token_revocations_created_at ON token_revocations (created_at);
