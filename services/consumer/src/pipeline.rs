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
//! While a batch is written, the next one's messages are received (and held,
//! their offsets not stored), so Kafka's side and Postgres's overlap. A
//! handled batch's spans, ended, are dropped on a thread of their own
//! (`crate::close`), so ending them overlaps the next batch's write too.
//!
//! A crash anywhere before step 3 replays the batch, which is harmless: rows
//! are written `ON CONFLICT (event_id) DO NOTHING`.
//!
//! The same replay covers a Kafka client that fails: fenced for good (a
//! fatal error), or unable to deliver a message whose offset the error does
//! not tell. Nothing after the error is taken; once the batch in hand is
//! handled, the client is replaced by a fresh one, which reads on from the
//! last committed offsets.
//!
//! The last commit and the close of a client block on the broker, so they
//! run on a thread of their own, waited for a bounded time: an unreachable
//! broker never holds the shutdown past its bound.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use anyhow::Context as _;
use callchain_events::dlq_topic;
use callchain_telemetry::kafka;
use rdkafka::{
    Message as _,
    consumer::{CommitMode, Consumer as _, StreamConsumer},
    error::{KafkaError, KafkaResult, RDKafkaErrorCode},
};
use sqlx::PgPool;
use tokio::time::Instant;
use tracing::Span;

use crate::{
    batch::{Backoff, Offsets},
    broker::{self, Member, Received},
    close::Close,
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
    /// The rows are committed (new ones, or already there from a replay);
    /// the statements' spans, ended, are still to be dropped.
    Committed(Vec<Span>),
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

/// How long replacing a failed client may wait for the old one to commit
/// and close.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the loop, while it waits for messages, asks the client whether
/// it failed for good (its error event says so too; this is the fallback).
const FATAL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The Kafka side: batches in, offsets out.
struct Source {
    kafka: StreamConsumer<Member>,
    /// To make a fresh client when this one fails.
    config: Config,
    health: Arc<Health>,
    /// The partitions' lag, for the metric; `None` without metrics.
    lag: Option<Arc<crate::lag::Lag>>,
    topic: String,
    group_id: std::sync::Arc<str>,
    batch_size: usize,
    batch_timeout: Duration,
    /// Messages that arrived while a batch was being retried; the next
    /// batches start with them.
    held: VecDeque<Consumed>,
    /// Shutdown came while a batch was written: no batch after it.
    stopping: bool,
    /// Why the client must be replaced, once the batch in hand is handled;
    /// from then on nothing more is taken from it.
    failed: Option<String>,
    /// The pause before each fresh client, so an error that comes back
    /// every time does not spin.
    restarts: Backoff,
    /// The highest offset stored per partition: what the last commit
    /// carries, named when it cannot be made.
    stored: Offsets,
    /// The share of the shutdown bound the last commit may take.
    commit_timeout: Duration,
    shutdown: Shutdown,
}

/// Where events go.
struct Sink {
    pool: PgPool,
    dead_letters: DeadLetters,
    health: Arc<Health>,
    /// Where handled batches are dropped, off this loop.
    close: Close,
}

/// A batch's write: the events stored (committed, new or from before) with
/// the statements' spans, and those Postgres refused, as dead letters.
struct Written {
    stored: Vec<Readable>,
    spans: Vec<Span>,
    refused: Vec<DeadLetter>,
}

impl Pipeline {
    pub fn new(config: &Config, pool: PgPool, health: Arc<Health>, shutdown: Shutdown) -> anyhow::Result<Self> {
        let lag = crate::lag::Lag::register();
        let kafka =
            broker::consumer(config, health.clone(), lag.clone()).context("cannot create the Kafka consumer")?;
        let producer = broker::dead_letter_producer(config).context("cannot create the dead-letter producer")?;
        Ok(Self {
            source: Source {
                kafka,
                config: config.clone(),
                health: health.clone(),
                lag,
                topic: config.topic.clone(),
                group_id: config.group_id.as_str().into(),
                batch_size: config.batch_size,
                batch_timeout: config.batch_timeout,
                held: VecDeque::new(),
                stopping: false,
                failed: None,
                restarts: Backoff::new(),
                stored: Offsets::default(),
                // The other half is the health server's and the spans'.
                commit_timeout: config.shutdown_timeout / 2,
                shutdown,
            },
            sink: Sink {
                pool,
                dead_letters: DeadLetters::new(producer, dlq_topic(&config.topic)),
                health,
                close: Close::start(),
            },
            process_delay: config.process_delay,
        })
    }

    /// Consumes until shutdown; the batch in hand is finished first, unless
    /// it is being retried, and the stored offsets are committed (within
    /// half the shutdown bound) before it returns. A client that fails is
    /// replaced; `Err` only when no fresh one can be made.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let consumed = self.consume().await;
        // Every handled batch's spans end before the caller flushes them,
        // whichever way the loop ended.
        self.sink.close.finish().await;
        consumed?;
        let Source {
            kafka,
            stored,
            commit_timeout,
            ..
        } = self.source;
        retire(kafka, commit_timeout, &stored).await;
        Ok(())
    }

    /// The loop itself, until shutdown or a client that cannot be replaced.
    async fn consume(&mut self) -> anyhow::Result<()> {
        self.source.subscribe()?;
        while let Some(batch) = self.source.next_batch().await {
            self.sink.health.handling();
            if !self.process_delay.is_zero() {
                let messages = u32::try_from(batch.len()).unwrap_or(u32::MAX);
                tokio::time::sleep(self.process_delay.saturating_mul(messages)).await;
            }
            let handled = self.handle(batch).await;
            self.sink.health.handled();
            if let Handled::StoppedWhileRetrying = handled {
                tracing::info!("stopped while retrying; the batch in hand will be replayed");
                break;
            }
            if let Some(why) = self.source.failed.take()
                && !self.source.replace_client(&why).await?
            {
                break;
            }
        }
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
        let Retried::Done(written) = self.write(readable).await else {
            return Handled::StoppedWhileRetrying;
        };
        dead.extend(written.refused);
        let Retried::Done(()) = self.send_dead_letters(dead).await else {
            return Handled::StoppedWhileRetrying;
        };
        self.source.store(&offsets);
        self.sink.close.close(written.stored, written.spans).await;
        Handled::Stored
    }

    /// Writes the events: those stored, and those Postgres refused, as dead
    /// letters.
    async fn write(&mut self, events: Vec<Readable>) -> Retried<Written> {
        let mut written = Written {
            stored: Vec::new(),
            spans: Vec::new(),
            refused: Vec::new(),
        };
        if events.is_empty() {
            return Retried::Done(written);
        }
        let error = match self.write_retrying(&events).await {
            Retried::Done(Write::Committed(spans)) => {
                written.stored = events;
                written.spans = spans;
                return Retried::Done(written);
            }
            Retried::Done(Write::Refused(error)) => error,
            Retried::Stopped => return Retried::Stopped,
        };
        if events.len() == 1 {
            written.refused = events.into_iter().map(|event| refused(event, &error)).collect();
            return Retried::Done(written);
        }
        // One row spoils the statement for all: write them one at a time to
        // find which, so the others are not held back by it.
        tracing::warn!(error = %error, events = events.len(), "Postgres refused a batch; writing its events one by one");
        for event in events {
            match self.write_retrying(std::slice::from_ref(&event)).await {
                Retried::Done(Write::Committed(spans)) => {
                    written.stored.push(event);
                    written.spans.extend(spans);
                }
                Retried::Done(Write::Refused(error)) => written.refused.push(refused(event, &error)),
                Retried::Stopped => return Retried::Stopped,
            }
        }
        Retried::Done(written)
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
        Ok(inserted) => {
            health.written(inserted.rows);
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
            Ok(Write::Committed(inserted.spans))
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
    /// Waits for a first message, then gathers up to `batch_size` messages
    /// or until `batch_timeout` has passed; cut short (empty, even) when the
    /// client fails. `None` at shutdown.
    async fn next_batch(&mut self) -> Option<Vec<Consumed>> {
        if self.stopping {
            return None;
        }
        let held = self.held.len().min(self.batch_size);
        let mut batch: Vec<Consumed> = self.held.drain(..held).collect();
        let mut fatal_check = tokio::time::interval(FATAL_CHECK_INTERVAL);
        while batch.is_empty() && self.failed.is_none() {
            tokio::select! {
                biased;
                () = self.shutdown.wait() => return None,
                received = self.kafka.recv() => {
                    let received = received.map(|message| Consumed::new(&message, &self.group_id));
                    batch.extend(self.accept(received));
                }
                _ = fatal_check.tick() => self.check_fatal(),
            }
        }
        let deadline = Instant::now() + self.batch_timeout;
        while batch.len() < self.batch_size && self.failed.is_none() {
            tokio::select! {
                biased;
                received = self.kafka.recv() => {
                    let received = received.map(|message| Consumed::new(&message, &self.group_id));
                    batch.extend(self.accept(received));
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        Some(batch)
    }

    /// A received message, with its process span opened. An error is sorted
    /// by [`broker::received_error`]: the end of a partition is noted for
    /// `/readyz`, a passing one logged, and one that fails the client stops
    /// the intake until it is replaced.
    fn accept(&mut self, received: KafkaResult<Consumed>) -> Option<Consumed> {
        if self.failed.is_some() {
            // After the error: the fresh client reads it again.
            return None;
        }
        let error = match received {
            Ok(consumed) => {
                self.health.received(consumed.message.partition());
                return Some(consumed);
            }
            Err(error) => error,
        };
        match broker::received_error(&error) {
            Received::AtEnd(partition) => self.health.at_end(partition),
            Received::Passing => {
                tracing::warn!(error = %error, "receiving from Kafka failed; librdkafka recovers by itself")
            }
            Received::Restart => self.fail(error.to_string()),
        }
        None
    }

    /// Notes a failed client, to be replaced once the batch in hand is
    /// handled; `/readyz` says so meanwhile.
    fn fail(&mut self, error: String) {
        let fatal = self
            .kafka
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"));
        tracing::error!(
            error,
            fatal = fatal.as_deref(),
            "the Kafka client failed; it is replaced by a fresh one, which reads on from the last committed offsets"
        );
        self.health.client_failed();
        self.failed = Some(fatal.unwrap_or(error));
    }

    /// Fails the client when librdkafka says it failed for good, in case
    /// its error event did not reach `recv`.
    fn check_fatal(&mut self) {
        if self.failed.is_none()
            && let Some((code, _)) = self.kafka.client().fatal_error()
        {
            self.fail(format!("a fatal error: {code}"));
        }
    }

    fn subscribe(&self) -> anyhow::Result<()> {
        self.kafka
            .subscribe(&[&self.topic])
            .with_context(|| format!("cannot subscribe to {}", self.topic))?;
        tracing::info!(topic = %self.topic, group = %self.group_id, "consuming");
        Ok(())
    }

    /// Replaces the failed client with a fresh one: the old one commits
    /// what it can and closes (off this task, bounded), and what it had
    /// fetched is left to the fresh one, which reads on from the last
    /// committed offsets. `false` at shutdown; `Err` when no client can be
    /// made.
    async fn replace_client(&mut self, why: &str) -> anyhow::Result<bool> {
        let fresh = broker::consumer(&self.config, self.health.clone(), self.lag.clone())
            .context("cannot create a fresh Kafka consumer")?;
        let failed = std::mem::replace(&mut self.kafka, fresh);
        self.held.clear();
        retire(failed, RETIRE_TIMEOUT, &self.stored).await;
        self.stored = Offsets::default();
        let delay = self.restarts.next_delay();
        tokio::select! {
            biased;
            () = self.shutdown.wait() => return Ok(false),
            () = tokio::time::sleep(delay) => {}
        }
        self.subscribe()?;
        self.health.client_started();
        tracing::info!(why, "a fresh Kafka client replaces the failed one");
        Ok(true)
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
                self.while_receiving(attempt()).await
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

    /// Runs `work` (a batch's write) while the next batch's messages are
    /// received into `held`, up to a batch: Kafka's side of the next batch
    /// (its receipt and process spans) overlaps Postgres's of this one, and
    /// the next batch is in hand when this one is done. Nothing received is
    /// stored before it is handled, so a crash replays it as before.
    ///
    /// Shutdown stops the receiving (the write goes on): what is held then
    /// is left for the next consumer, as it was never stored.
    async fn while_receiving<T>(&mut self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        let mut shutdown = std::pin::pin!(self.shutdown.wait());
        while self.held.len() < self.batch_size && self.failed.is_none() && !self.stopping {
            tokio::select! {
                biased;
                done = &mut work => return done,
                () = &mut shutdown => self.stopping = true,
                received = self.kafka.recv() => {
                    let received = received.map(|message| Consumed::new(&message, &self.group_id));
                    let consumed = self.accept(received);
                    self.held.extend(consumed);
                }
            }
        }
        work.await
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
                    let received = received.map(|message| Consumed::new(&message, &self.group_id));
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
    fn store(&mut self, offsets: &Offsets) {
        for (topic, partition, offset) in offsets.iter() {
            // librdkafka stores `offset + 1`: the next message to read.
            match self.kafka.store_offset(topic, partition, offset) {
                Ok(()) => {
                    self.stored.handled(topic, partition, offset);
                    // A client that delivers again needs no more patience.
                    self.restarts = Backoff::new();
                }
                // The partition was revoked meanwhile (or the client
                // failed): its next reader replays from the last commit,
                // harmlessly.
                Err(error) => tracing::warn!(error = %error, topic, partition, offset, "storing an offset failed"),
            }
        }
    }
}

/// Commits `kafka`'s stored offsets and closes it, on a thread of its own
/// (both block on the broker), waiting at most `bound`: past it the thread
/// is left to finish or not, and the events after the last commit (up to
/// `stored`) are replayed by the next reader, harmlessly. A thread, not
/// `spawn_blocking`: the runtime waits for those as it shuts down.
async fn retire(kafka: StreamConsumer<Member>, bound: Duration, stored: &Offsets) {
    let (closed, on_closed) = tokio::sync::oneshot::channel();
    let closing = std::thread::Builder::new().name("kafka-close".into()).spawn(move || {
        commit(&kafka);
        drop(kafka);
        let _ = closed.send(());
    });
    if let Err(error) = closing {
        tracing::warn!(error = %error, "no thread to close the Kafka client on; it is left unclosed");
        return;
    }
    if tokio::time::timeout(bound, on_closed).await.is_err() {
        let handled: Vec<String> = stored
            .iter()
            .map(|(topic, partition, offset)| format!("{topic}/{partition}@{offset}"))
            .collect();
        tracing::warn!(
            bound_ms = bound.as_millis() as u64,
            handled = ?handled,
            "the Kafka client did not commit and close in time (is the broker reachable?); the events after the last commit will be replayed"
        );
    }
}

/// Commits the stored offsets (with no offsets given, librdkafka commits
/// those stored, not the position).
fn commit(kafka: &StreamConsumer<Member>) {
    match kafka.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("offsets committed"),
        // Nothing stored since the last auto-commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            tracing::warn!(error = %error, "committing offsets failed; the events after the last commit will be replayed")
        }
    }
}
