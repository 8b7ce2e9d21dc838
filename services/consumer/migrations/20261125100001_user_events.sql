-- Every user event the consumer read from `user-events`, once per event id:
-- replays after a crash hit the primary key and are skipped.
CREATE TABLE user_events (
    event_id        uuid        PRIMARY KEY,
    event_type      text        NOT NULL,
    user_id         uuid        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    schema_version  integer     NOT NULL,
    payload         jsonb       NOT NULL,
    trace_id        text,                 -- the trace of the request that made the event
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    written_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX user_events_user_id ON user_events (user_id, occurred_at);
