-- Events waiting for Kafka: written in the same transaction as the change
-- they tell of, so no committed change is without its event. The relay
-- publishes them in `id` order (so one user's events keep their order) and
-- deletes each once the broker has acknowledged it. The trace headers are the
-- writing request's, so the publish stays in that request's trace.
CREATE TABLE outbox (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    topic       text        NOT NULL,
    key         text        NOT NULL,
    event_type  text        NOT NULL,
    payload     bytea       NOT NULL,
    traceparent text,
    tracestate  text,
    baggage     text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Wakes the relays (`LISTEN outbox`) when a transaction that wrote to the
-- outbox commits: Postgres delivers a notification at commit, never for a
-- rollback, and folds a transaction's identical notifications into one.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
