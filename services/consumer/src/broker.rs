//! The Kafka clients, configured, with librdkafka's own logs and errors
//! routed into our JSON logs.

use rdkafka::{
    ClientConfig, ClientContext, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, KafkaResult, RDKafkaErrorCode},
    producer::FutureProducer,
};

use crate::config::Config;

/// rdkafka reports through the `log` crate by default, which nothing here
/// listens to; this context reports through `tracing` instead. Broker outages
/// arrive here as errors: librdkafka reconnects by itself, so they are logged
/// and nothing else.
pub struct KafkaLogs;

impl ClientContext for KafkaLogs {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "kafka client error: {reason}");
    }
}

impl ConsumerContext for KafkaLogs {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = ?partition_ids(partitions), "partitions assigned")
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = ?partition_ids(partitions), "partitions revoked")
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

fn partition_ids(partitions: &TopicPartitionList) -> Vec<i32> {
    partitions.elements().iter().map(|p| p.partition()).collect()
}

/// The group consumer of `user-events`. Offsets are committed automatically,
/// but only those the pipeline stored, and it stores them only once their
/// rows are committed in Postgres (or their dead letters acknowledged).
pub fn consumer(config: &Config) -> KafkaResult<StreamConsumer<KafkaLogs>> {
    let mut client = ClientConfig::new();
    if let Some(instance) = &config.group_instance_id {
        client.set("group.instance.id", instance);
    }
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("client.id", "consumer")
        // A member that stops heartbeating (a crashed consumer that does not
        // come back) loses its partitions to the others after 10 s, not the
        // 45 s default. The broker allows 6 s at the least.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
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
        .create_with_context(KafkaLogs)
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
