-- Each user's version: 1 when created, one more with each write, counted in
-- the write's own statement (under the row's lock, so in the order the
-- writes commit). Every event carries the version its write made as its
-- `sequence`, so a reader tells an older event of a user from a newer one.
ALTER TABLE users ADD COLUMN version bigint NOT NULL DEFAULT 1;

-- The outbox row keeps its event's sequence beside the payload that carries
-- it. (NULL only on rows written before sequences existed.)
ALTER TABLE outbox ADD COLUMN sequence bigint;

-- Events the relay can never publish (their topic does not exist, the
-- message is larger than the broker takes): parked here with the reason, so
-- they no longer hold up the outbox behind them. Their user's sequence then
-- has a gap, which the consumer's table shows. Once the cause is fixed, an
-- operator may put a row back into `outbox`.
CREATE TABLE outbox_dead_letters (
    id          bigint      PRIMARY KEY,  -- the outbox row's id
    event_id    uuid        NOT NULL UNIQUE,
    topic       text        NOT NULL,
    key         text        NOT NULL,
    event_type  text        NOT NULL,
    payload     bytea       NOT NULL,
    traceparent text,
    tracestate  text,
    baggage     text,
    sequence    bigint,
    created_at  timestamptz NOT NULL,
    reason      text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
