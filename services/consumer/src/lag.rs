//! The consumer's lag per partition, from librdkafka's statistics, as the
//! `callchain.consumer.lag` gauge: how many messages of each assigned
//! partition the group has not committed yet.

use std::sync::{Arc, Mutex};

use callchain_telemetry::metrics::KeyValue;
use rdkafka::Statistics;

/// How often librdkafka reports its statistics (`statistics.interval.ms`)
/// when the service records metrics; none are gathered otherwise.
pub const STATISTICS_INTERVAL_MS: u32 = 1000;

/// The lag of each partition in the client's last statistics: topic,
/// partition, messages.
#[derive(Default)]
pub struct Lag(Mutex<Vec<(String, i32, i64)>>);

impl Lag {
    /// The gauge, read at each metric export; `None` when the service
    /// records no metrics.
    pub fn register() -> Option<Arc<Self>> {
        let meter = callchain_telemetry::metrics::meter()?;
        let lag = Arc::new(Self::default());
        let read = Arc::downgrade(&lag);
        meter
            .i64_observable_gauge("callchain.consumer.lag")
            .with_unit("{message}")
            .with_description(
                "Messages of a partition the consumer group has not yet committed, from the Kafka client's statistics.",
            )
            .with_callback(move |gauge| {
                let Some(lag) = read.upgrade() else { return };
                for (topic, partition, messages) in lag.0.lock().expect("lag").iter() {
                    gauge.observe(
                        *messages,
                        &[
                            KeyValue::new("messaging.destination.name", topic.clone()),
                            KeyValue::new("messaging.destination.partition.id", partition.to_string()),
                        ],
                    );
                }
            })
            .build();
        Some(lag)
    }

    /// Takes the lag of every partition assigned to the client (`desired`;
    /// librdkafka also keeps an internal partition -1).
    pub fn update(&self, statistics: &Statistics) {
        let partitions = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values().map(move |p| (topic, p)))
            .filter(|(_, p)| p.partition >= 0 && p.desired)
            .filter_map(|(topic, p)| Some((topic.topic.clone(), p.partition, lag(p)?)))
            .collect();
        *self.0.lock().expect("lag") = partitions;
    }
}

/// A partition's lag: librdkafka's `consumer_lag` (its end less the
/// group's committed offset); on a partition the group never committed,
/// which it reads from the start, every message it holds; `None` before
/// the client knows the partition's offsets.
fn lag(partition: &rdkafka::statistics::Partition) -> Option<i64> {
    if partition.consumer_lag >= 0 {
        return Some(partition.consumer_lag);
    }
    let never_committed = partition.committed_offset < 0;
    (never_committed && partition.hi_offset >= 0 && partition.lo_offset >= 0)
        .then(|| partition.hi_offset - partition.lo_offset)
}
