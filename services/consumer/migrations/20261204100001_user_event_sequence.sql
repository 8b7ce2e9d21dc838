-- Each event's `sequence`: its user's version after the write it tells of
-- (1 for the creation, one more per write). NULL only on rows stored before
-- events carried one. A user's rows never go back in sequence: an event
-- older than one already stored is kept apart (below), and a number missing
-- between two stored ones is a gap anyone can see.
ALTER TABLE user_events ADD COLUMN sequence bigint;
CREATE UNIQUE INDEX user_events_user_sequence ON user_events (user_id, sequence);

-- Events that arrived after a newer event of their user had been stored:
-- not stored in `user_events` (it would put the user's state back), but
-- recorded here once each, beside their user's newest stored sequence.
CREATE TABLE stale_user_events (
    event_id        uuid        PRIMARY KEY,
    event_type      text        NOT NULL,
    user_id         uuid        NOT NULL,
    sequence        bigint      NOT NULL,
    newer_sequence  bigint      NOT NULL,  -- the user's newest stored when this was recorded
    occurred_at     timestamptz NOT NULL,
    payload         jsonb       NOT NULL,
    trace_id        text,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    written_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
