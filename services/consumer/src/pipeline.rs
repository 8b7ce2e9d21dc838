//! The consume loop: batches from `user-events` into Postgres, unreadable
//! messages to `user-events.dlq`, offsets stored only once both are done.
//!
//! A batch is handled in three steps, each retried until it succeeds:
//!
//! 1. its readable events are written in one transaction;
//! 2. its dead letters (unreadable messages, and events Postgres refused)
//!    are sent and acknowledged;
//! 3. the highest offset of each partition is stored; librdkafka commits
//!    stored offsets in the background, and once more at shutdown.
//!
//! A crash anywhere before step 3 replays the batch, which is harmless: rows
//! are written `ON CONFLICT (event_id) DO NOTHING`.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use anyhow::Context as _;
use callchain_events::dlq_topic;
use callchain_telemetry::kafka;
use rdkafka::{
    Message as _,
    consumer::{CommitMode, Consumer as _, StreamConsumer},
    error::{KafkaError, KafkaResult, RDKafkaErrorCode},
    message::BorrowedMessage,
};
use sqlx::PgPool;
use tokio::time::Instant;

use crate::{
    batch::{Backoff, Offsets},
    broker::{self, KafkaLogs},
    config::Config,
    dead_letter::DeadLetters,
    health::Health,
    message::{Consumed, DeadLetter, Readable},
    shutdown::Shutdown,
    store::{self, WriteError},
};

/// What became of a batch.
#[must_use]
enum Handled {
    /// Its rows are committed and its dead letters acknowledged, so its
    /// offsets are stored.
    Stored,
    /// Shutdown came while a step of it was being retried: nothing is
    /// stored, and the batch will be replayed.
    StoppedWhileRetrying,
}

/// How a step that is retried until it succeeds ended.
#[must_use]
enum Retried<T> {
    /// It succeeded, with this result.
    Done(T),
    /// Shutdown came while it kept failing.
    Stopped,
}

/// What Postgres made of a write it answered.
enum Write {
    /// The rows are committed (new ones, or already there from a replay).
    Committed,
    /// Postgres refused the rows themselves; no retry can change that.
    Refused(WriteError),
}

/// The consume loop: where messages come from, and where they go.
pub struct Pipeline {
    source: Source,
    sink: Sink,
    /// `FAULT_PROCESS_DELAY_MS` per message: a slow consumer, on purpose.
    process_delay: Duration,
}

/// The Kafka side: batches in, offsets out.
struct Source {
    kafka: StreamConsumer<KafkaLogs>,
    topic: String,
    group_id: String,
    batch_size: usize,
    batch_timeout: Duration,
    /// Messages that arrived while a batch was being retried; the next
    /// batches start with them.
    held: VecDeque<Consumed>,
    shutdown: Shutdown,
}

/// Where events go.
struct Sink {
    pool: PgPool,
    dead_letters: DeadLetters,
    health: Arc<Health>,
}

impl Pipeline {
    pub fn new(config: &Config, pool: PgPool, health: Arc<Health>, shutdown: Shutdown) -> anyhow::Result<Self> {
        let kafka = broker::consumer(config).context("cannot create the Kafka consumer")?;
        let producer = broker::dead_letter_producer(config).context("cannot create the dead-letter producer")?;
        Ok(Self {
            source: Source {
                kafka,
                topic: config.topic.clone(),
                group_id: config.group_id.clone(),
                batch_size: config.batch_size,
                batch_timeout: config.batch_timeout,
                held: VecDeque::new(),
                shutdown,
            },
            sink: Sink {
                pool,
                dead_letters: DeadLetters::new(producer, dlq_topic(&config.topic)),
                health,
            },
            process_delay: config.process_delay,
        })
    }

    /// Consumes until shutdown; the batch in hand is finished first, unless
    /// it is being retried, and the stored offsets are committed before it
    /// returns.
    pub async fn run(mut self) -> anyhow::Result<()> {
        self.source
            .kafka
            .subscribe(&[&self.source.topic])
            .with_context(|| format!("cannot subscribe to {}", self.source.topic))?;
        tracing::info!(topic = %self.source.topic, group = %self.source.group_id, "consuming");
        while let Some(batch) = self.source.next_batch().await {
            if !self.process_delay.is_zero() {
                let messages = u32::try_from(batch.len()).unwrap_or(u32::MAX);
                tokio::time::sleep(self.process_delay.saturating_mul(messages)).await;
            }
            match self.handle(batch).await {
                Handled::Stored => {}
                Handled::StoppedWhileRetrying => {
                    tracing::info!("stopped while retrying; the batch in hand will be replayed");
                    break;
                }
            }
        }
        self.source.commit();
        Ok(())
    }

    /// Writes a batch, dead-letters what cannot be written, then stores its
    /// offsets.
    async fn handle(&mut self, batch: Vec<Consumed>) -> Handled {
        let mut offsets = Offsets::default();
        let mut readable = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        for consumed in batch {
            let message = &consumed.message;
            offsets.handled(message.topic(), message.partition(), message.offset());
            match consumed.read() {
                Ok(row) => readable.push(Readable { consumed, row }),
                Err(error) => dead.push(consumed.dead_letter(error.to_string())),
            }
        }
        let Retried::Done(refused) = self.write(readable).await else {
            return Handled::StoppedWhileRetrying;
        };
        dead.extend(refused);
        let Retried::Done(()) = self.send_dead_letters(dead).await else {
            return Handled::StoppedWhileRetrying;
        };
        self.source.store(&offsets);
        Handled::Stored
    }

    /// Writes the events; returns those Postgres refused, as dead letters.
    async fn write(&mut self, events: Vec<Readable>) -> Retried<Vec<DeadLetter>> {
        if events.is_empty() {
            return Retried::Done(Vec::new());
        }
        let error = match self.write_retrying(&events).await {
            Retried::Done(Write::Committed) => return Retried::Done(Vec::new()),
            Retried::Done(Write::Refused(error)) => error,
            Retried::Stopped => return Retried::Stopped,
        };
        if events.len() == 1 {
            return Retried::Done(events.into_iter().map(|event| refused(event, &error)).collect());
        }
        // One row spoils the statement for all: write them one at a time to
        // find which, so the others are not held back by it.
        tracing::warn!(error = %error, events = events.len(), "Postgres refused a batch; writing its events one by one");
        let mut rejected = Vec::new();
        for event in events {
            match self.write_retrying(std::slice::from_ref(&event)).await {
                Retried::Done(Write::Committed) => {}
                Retried::Done(Write::Refused(error)) => rejected.push(refused(event, &error)),
                Retried::Stopped => return Retried::Stopped,
            }
        }
        Retried::Done(rejected)
    }

    /// One write, retried while Postgres is unavailable, until Postgres
    /// commits the rows or refuses them.
    async fn write_retrying(&mut self, events: &[Readable]) -> Retried<Write> {
        let Sink { pool, health, .. } = &self.sink;
        self.source
            .retry("writing events to Postgres", || write_once(pool, health, events))
            .await
    }

    /// Sends the dead letters and waits for every acknowledgement; those
    /// that fail are sent again.
    async fn send_dead_letters(&mut self, letters: Vec<DeadLetter>) -> Retried<()> {
        if letters.is_empty() {
            return Retried::Done(());
        }
        for letter in &letters {
            let message = &letter.consumed.message;
            letter.consumed.span.in_scope(|| {
                tracing::warn!(
                    reason = %letter.reason,
                    partition = message.partition(),
                    offset = message.offset(),
                    "sending the message to the dead-letter topic"
                );
            });
            kafka::record_error(&letter.consumed.span, &letter.reason);
        }
        let sink = &self.sink;
        self.source
            .retry("sending dead letters", || send_unsent(sink, &letters))
            .await
    }
}

/// One attempt at a write; `Err` when Postgres is unavailable, and the write
/// is worth trying again.
async fn write_once(pool: &PgPool, health: &Health, events: &[Readable]) -> Result<Write, WriteError> {
    let rows: Vec<_> = events.iter().map(|event| (&event.row, &event.consumed.span)).collect();
    match store::insert(pool, &rows).await {
        Ok(rows) => {
            health.written(rows);
            // One line per event, inside its span: `grep <trace-id>` over the
            // logs finds where each request's event ended up.
            for event in events {
                let row = &event.row;
                event.consumed.span.in_scope(|| {
                    tracing::info!(
                        event_id = %row.event.event_id,
                        event_type = row.event.event_type.as_str(),
                        user_id = %row.event.user_id,
                        partition = row.partition,
                        offset = row.offset,
                        "event stored"
                    );
                });
            }
            Ok(Write::Committed)
        }
        Err(error @ WriteError::Rejected(_)) => {
            health.database_answered();
            Ok(Write::Refused(error))
        }
        Err(error) => {
            health.database_failed();
            Err(error)
        }
    }
}

/// Sends, all at once, the dead letters the broker has not acknowledged yet.
async fn send_unsent(sink: &Sink, letters: &[DeadLetter]) -> Result<(), KafkaError> {
    let sends = letters
        .iter()
        .filter(|letter| !letter.is_sent())
        .map(|letter| async move {
            let consumed = &letter.consumed;
            sink.dead_letters
                .send(&consumed.message, &letter.reason, &consumed.span)
                .await?;
            letter.mark_sent();
            sink.health.dead_lettered();
            Ok(())
        });
    futures::future::join_all(sends).await.into_iter().collect()
}

fn refused(event: Readable, error: &WriteError) -> DeadLetter {
    event.consumed.dead_letter(error.to_string())
}

impl Source {
    /// Waits for a first message, then gathers up to `batch_size` messages
    /// or until `batch_timeout` has passed. `None` at shutdown.
    async fn next_batch(&mut self) -> Option<Vec<Consumed>> {
        let held = self.held.len().min(self.batch_size);
        let mut batch: Vec<Consumed> = self.held.drain(..held).collect();
        while batch.is_empty() {
            tokio::select! {
                biased;
                () = self.shutdown.wait() => return None,
                received = self.kafka.recv() => batch.extend(self.accept(received)),
            }
        }
        let deadline = Instant::now() + self.batch_timeout;
        while batch.len() < self.batch_size {
            tokio::select! {
                biased;
                received = self.kafka.recv() => batch.extend(self.accept(received)),
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        Some(batch)
    }

    /// A received message, with its process span opened; errors are logged:
    /// librdkafka recovers from them by itself.
    fn accept(&self, received: KafkaResult<BorrowedMessage<'_>>) -> Option<Consumed> {
        match received {
            Ok(message) => Some(Consumed::new(&message, &self.group_id)),
            Err(error) => {
                tracing::warn!(error = %error, "receiving from Kafka failed");
                None
            }
        }
    }

    /// Runs `attempt` until it succeeds, with a growing pause between
    /// attempts, and logs each failure. While it fails, the assignment is
    /// paused so no more messages pile up. `Stopped` when shutdown comes
    /// while retrying; the first attempt is always let finish.
    async fn retry<T, E, F>(&mut self, what: &str, mut attempt: impl FnMut() -> F) -> Retried<T>
    where
        E: std::fmt::Display,
        F: Future<Output = Result<T, E>>,
    {
        let mut backoff = Backoff::new();
        let mut failures = 0u32;
        loop {
            let result = if failures == 0 {
                attempt().await
            } else {
                tokio::select! {
                    biased;
                    () = self.shutdown.wait() => return Retried::Stopped,
                    result = attempt() => result,
                }
            };
            match result {
                Ok(value) => {
                    if failures > 0 {
                        self.set_paused(false);
                        tracing::info!(failures, "{what} succeeded again; consuming resumes");
                    }
                    return Retried::Done(value);
                }
                Err(error) => {
                    failures += 1;
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = %error,
                        attempt = failures,
                        retry_in_ms = delay.as_millis() as u64,
                        "{what} failed; nothing is committed until it succeeds"
                    );
                    // Every time, to cover partitions assigned since.
                    self.set_paused(true);
                    if !self.idle(delay).await {
                        return Retried::Stopped;
                    }
                }
            }
        }
    }

    /// Waits `delay`, still polling the consumer: librdkafka takes a consumer
    /// that is not polled for `max.poll.interval.ms` for dead and gives its
    /// partitions away. What arrives meanwhile (fetched before the pause)
    /// is held for the next batch. `false` at shutdown.
    async fn idle(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.wait() => return false,
                () = tokio::time::sleep_until(deadline) => return true,
                received = self.kafka.recv() => {
                    let consumed = self.accept(received);
                    self.held.extend(consumed);
                }
            }
        }
    }

    fn set_paused(&self, paused: bool) {
        let result = self.kafka.assignment().and_then(|assignment| {
            if paused {
                self.kafka.pause(&assignment)
            } else {
                self.kafka.resume(&assignment)
            }
        });
        if let Err(error) = result {
            tracing::warn!(error = %error, paused, "pausing or resuming the assignment failed");
        }
    }

    /// Stores the offsets of a handled batch, for the next commit.
    fn store(&self, offsets: &Offsets) {
        for (topic, partition, offset) in offsets.iter() {
            // librdkafka stores `offset + 1`: the next message to read.
            if let Err(error) = self.kafka.store_offset(topic, partition, offset) {
                // The partition was revoked meanwhile: its new owner replays
                // from the last commit, harmlessly.
                tracing::warn!(error = %error, topic, partition, offset, "storing an offset failed");
            }
        }
    }

    /// Commits the stored offsets before leaving (with no offsets given,
    /// librdkafka commits those stored, not the position).
    fn commit(&self) {
        match self.kafka.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("offsets committed"),
            // Nothing stored since the last auto-commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(error = %error, "committing offsets failed; the last events will be replayed"),
        }
    }
}
