-- Idempotency keys are each caller's own, so two callers' equal keys never
-- meet. Rows from before belong to no caller ('') and expire with the
-- retention. `fingerprint` is now a SHA-256 digest of every field of the
-- request (the password included), never a field itself.
ALTER TABLE idempotency_keys ADD COLUMN caller text NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys ALTER COLUMN caller DROP DEFAULT;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (caller, scope, key);

-- Keys past their retention are pruned oldest first, found by age.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
