//! The Kafka clients, configured, with librdkafka's own logs and errors
//! routed into our JSON logs ([`KafkaLogs`]), and what an error from the
//! consumer means.

use std::sync::Arc;

use rdkafka::{
    ClientConfig, ClientContext, Statistics, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, KafkaResult, RDKafkaErrorCode},
    producer::FutureProducer,
};

use callchain_telemetry::kafka::{self, KafkaLogs};

use crate::{
    config::Config,
    health::Health,
    lag::{self, Lag},
};

/// The group consumer's context: librdkafka's logs and errors in ours, its
/// assignments in [`Health`], for `/readyz`, and its statistics' lag per
/// partition in [`Lag`], for the metric. With the cooperative protocol an
/// assignment or a revocation names only the partitions that change hands;
/// the others stay and keep being consumed.
pub struct Member {
    health: Arc<Health>,
    lag: Option<Arc<Lag>>,
}

impl ClientContext for Member {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        kafka::log(level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        if let Some(lag) = &self.lag {
            lag.update(&statistics);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            // Reaching a partition's end is news, not trouble: the loop
            // takes it from `recv`.
            Some(RDKafkaErrorCode::PartitionEOF) => {}
            // The loop replaces the client (it reads the same error from
            // `recv`); this is the line that says why.
            Some(RDKafkaErrorCode::Fatal) => {
                tracing::error!(target: "librdkafka", error = %error, "kafka client failed for good: {reason}")
            }
            _ => tracing::warn!(target: "librdkafka", error = %error, "kafka client error: {reason}"),
        }
    }
}

impl ConsumerContext for Member {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let partitions = partition_ids(partitions);
                tracing::info!(partitions = ?partitions, "partitions assigned");
                self.health.assigned(&partitions);
            }
            Rebalance::Revoke(partitions) => {
                let partitions = partition_ids(partitions);
                tracing::info!(partitions = ?partitions, "partitions revoked");
                self.health.revoked(&partitions);
            }
            Rebalance::Error(error) => tracing::warn!(error = %error, "rebalancing failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            // An auto-commit with nothing stored since the last one.
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(
                error = %error,
                "committing offsets failed; the next commit carries them, or they are replayed"
            ),
        }
    }
}

/// What an error from the consumer's `recv` means for the consume loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The partition is read to its end: nothing waits in it.
    AtEnd(i32),
    /// A broker away, a coordinator moving, a rebalance: librdkafka
    /// recovers by itself and no message is passed over, so the loop says
    /// so and goes on.
    Passing,
    /// The client is unusable (a fatal error, such as being fenced by a
    /// member with the same `group.instance.id`), or a message could not be
    /// delivered and the error does not say which (rdkafka drops its
    /// partition and offset). Going on would store later offsets past it;
    /// the loop replaces the client instead, which reads on from the last
    /// committed offsets, so nothing is passed over unrecorded.
    Restart,
}

/// Sorts an error from `recv` (see [`Received`]). Anything not known to be
/// passing restarts the client: a replay is harmless, a skipped message is
/// not.
pub fn received_error(error: &KafkaError) -> Received {
    match error {
        KafkaError::PartitionEOF(partition) => Received::AtEnd(*partition),
        KafkaError::MessageConsumptionFatal(_) => Received::Restart,
        KafkaError::MessageConsumption(code) if passing(*code) => Received::Passing,
        _ => Received::Restart,
    }
}

/// Errors librdkafka reports and recovers from by itself, no message lost:
/// connections, coordinators, leaders, rebalances, and a consumer that was
/// not polled in time (it rejoins at the next poll).
fn passing(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as E;
    matches!(
        code,
        E::BrokerTransportFailure
            | E::AllBrokersDown
            | E::Resolve
            | E::OperationTimedOut
            | E::TimedOutQueue
            | E::BrokerNotAvailable
            | E::NetworkException
            | E::RequestTimedOut
            | E::LeaderNotAvailable
            | E::NotLeaderForPartition
            | E::CoordinatorLoadInProgress
            | E::CoordinatorNotAvailable
            | E::NotCoordinator
            | E::RebalanceInProgress
            | E::PollExceeded
    )
}

/// How the group shares the partitions (see [`consumer`]).
pub const ASSIGNMENT_STRATEGY: &str = "cooperative-sticky";

fn partition_ids(partitions: &TopicPartitionList) -> Vec<i32> {
    partitions.elements().iter().map(|p| p.partition()).collect()
}

/// The group consumer of `user-events`. Offsets are committed automatically,
/// but only those the pipeline stored, and it stores them only once their
/// rows are committed in Postgres (or their dead letters acknowledged).
///
/// The cooperative-sticky assignor moves only the partitions that must move
/// when a member joins or leaves: the others keep theirs and never stop
/// (the eager default revokes every member's partitions at each rebalance).
/// A batch in hand holding a revoked partition's messages is still written;
/// storing its offset then fails (librdkafka refuses an offset of a partition
/// no longer assigned), so the partition's new owner replays it from the last
/// commit, harmlessly (rows are written `ON CONFLICT DO NOTHING`). librdkafka
/// commits the stored offsets of revoked partitions as it revokes them.
pub fn consumer(config: &Config, health: Arc<Health>, lag: Option<Arc<Lag>>) -> KafkaResult<StreamConsumer<Member>> {
    let mut client = client_config(config);
    if lag.is_some() {
        client.set("statistics.interval.ms", lag::STATISTICS_INTERVAL_MS.to_string());
    }
    client.create_with_context(Member { health, lag })
}

/// The group consumer's settings, as [`consumer`] creates it with them
/// (`make bench` reads the topic raw with the same ones, for the limit the
/// consumer is held against).
pub fn client_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    if let Some(instance) = &config.group_instance_id {
        client.set("group.instance.id", instance);
    }
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("client.id", "consumer")
        .set("partition.assignment.strategy", ASSIGNMENT_STRATEGY)
        // A member that stops heartbeating (a crashed consumer that does not
        // come back) loses its partitions to the others after 6 s, the least
        // the broker allows, not the 45 s default; heartbeats every second
        // tell the others of the rebalance within a second of it, so the
        // partitions are consumed again within 10 s of the crash.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        // A broker that hangs (paused, or its machine stalled) keeps its
        // connections open and answers nothing: a request is given up after
        // 10 s rather than librdkafka's 60 s, and the connection with it, so
        // the partitions it led are read from their new leaders once the
        // cluster has moved them (its session, 9 s).
        .set("socket.timeout.ms", "10000")
        .set("enable.auto.commit", "true")
        // Stored offsets reach the broker within a second (librdkafka's
        // default is 5 s), so a crash replays less.
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A fetch returns once it has data; on an idle partition the broker
        // holds it at most this long. librdkafka's 500 ms default would add
        // up to half a second to the lag from an API answer to the row.
        .set("fetch.wait.max.ms", "10")
        // `recv` says when a partition is read to its end: `/readyz` tells
        // a consumer with nothing to read from one that reads nothing.
        .set("enable.partition.eof", "true");
    client
}

/// The producer of dead letters: idempotent and acknowledged by every
/// in-sync replica, like the API's. A delivery that has not succeeded within
/// `message.timeout.ms` fails, and the pipeline retries it.
pub fn dead_letter_producer(config: &Config) -> KafkaResult<FutureProducer<KafkaLogs>> {
    ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", "consumer-dlq")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "10000")
        .create_with_context(KafkaLogs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_read_to_its_end_is_news_of_that_partition() {
        assert_eq!(received_error(&KafkaError::PartitionEOF(2)), Received::AtEnd(2));
    }

    #[test]
    fn a_fatal_error_such_as_being_fenced_restarts_the_client() {
        assert_eq!(
            received_error(&KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::Fatal)),
            Received::Restart
        );
    }

    #[test]
    fn a_message_that_could_not_be_delivered_restarts_the_client_rather_than_being_passed_over() {
        for code in [
            RDKafkaErrorCode::BadMessage,
            RDKafkaErrorCode::BadCompression,
            RDKafkaErrorCode::InvalidMessage,
            RDKafkaErrorCode::OffsetOutOfRange,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            assert_eq!(
                received_error(&KafkaError::MessageConsumption(code)),
                Received::Restart,
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_broker_or_coordinator_away_is_passing_and_consumption_goes_on() {
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotCoordinator,
            RDKafkaErrorCode::PollExceeded,
        ] {
            assert_eq!(
                received_error(&KafkaError::MessageConsumption(code)),
                Received::Passing,
                "{code:?}"
            );
        }
    }
}
