-- API keys (both flavours): who may call the services. Only a SHA-256 of the secret part is
-- stored (keys are 256-bit random, so a fast hash is enough; the secret is shown once).
-- Admin keys cannot be team-scoped.
CREATE TABLE llmmeter_api_keys (
    key_id      text PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('ingest', 'read', 'admin')),
    team        text CHECK (team IS NULL OR team <> ''),
    secret_hash bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (role <> 'admin' OR team IS NULL)
);
CREATE INDEX llmmeter_api_keys_created_idx ON llmmeter_api_keys (created_at DESC, key_id DESC);
