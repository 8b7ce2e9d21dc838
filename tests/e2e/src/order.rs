//! Per-user order, checked: what the consumer's table holds of each user
//! must be that user's sequence (1 for the creation, one more per write)
//! stored in order and without a hole, but for the events the relay parked
//! as undeliverable (`outbox_dead_letters`). An event the consumer did not
//! store because a newer one of its user came first would leave a hole; one
//! stored after a newer one would be an inversion.

use std::collections::{BTreeMap, HashSet};

use sqlx::PgPool;

/// What is wrong with one user's stored events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceFault {
    /// `then` was stored after `after`, which is not older.
    Inverted { user: uuid::Uuid, after: i64, then: i64 },
    /// Sequences below the user's newest stored that are neither stored nor
    /// parked.
    Hole { user: uuid::Uuid, missing: Vec<i64> },
}

impl std::fmt::Display for SequenceFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inverted { user, after, then } => {
                write!(f, "user {user}: sequence {then} stored after {after}")
            }
            Self::Hole { user, missing } => write!(f, "user {user}: sequences {missing:?} missing"),
        }
    }
}

/// The faults of `stored` (each event's user and sequence, in the order the
/// consumer stored them), given the events `parked` by the relay.
pub fn sequence_faults(stored: &[(uuid::Uuid, i64)], parked: &HashSet<(uuid::Uuid, i64)>) -> Vec<SequenceFault> {
    let mut users: BTreeMap<uuid::Uuid, Vec<i64>> = BTreeMap::new();
    for &(user, sequence) in stored {
        users.entry(user).or_default().push(sequence);
    }
    let mut faults = Vec::new();
    for (user, sequences) in users {
        if let Some(pair) = sequences.windows(2).find(|pair| pair[0] >= pair[1]) {
            faults.push(SequenceFault::Inverted {
                user,
                after: pair[0],
                then: pair[1],
            });
        }
        let present: HashSet<i64> = sequences.iter().copied().collect();
        let newest = sequences.iter().copied().max().unwrap_or(0);
        let missing: Vec<i64> = (1..newest)
            .filter(|n| !present.contains(n) && !parked.contains(&(user, *n)))
            .collect();
        if !missing.is_empty() {
            faults.push(SequenceFault::Hole { user, missing });
        }
    }
    faults
}

/// Reads the consumer's `user_events` (in the order it stored them: by
/// partition and offset, one user's events being in one partition) and the
/// relay's `outbox_dead_letters` from `pool`, the database both services
/// share, and checks them.
pub async fn stored_sequence_faults(pool: &PgPool) -> anyhow::Result<Vec<SequenceFault>> {
    let stored: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT user_id, sequence FROM user_events WHERE sequence IS NOT NULL \
         ORDER BY kafka_partition, kafka_offset",
    )
    .fetch_all(pool)
    .await?;
    let parked: Vec<(String, i64)> =
        sqlx::query_as("SELECT key, sequence FROM outbox_dead_letters WHERE sequence IS NOT NULL")
            .fetch_all(pool)
            .await?;
    let parked = parked
        .into_iter()
        .filter_map(|(key, sequence)| Some((key.parse().ok()?, sequence)))
        .collect();
    Ok(sequence_faults(&stored, &parked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_stored_in_order_without_a_hole_has_no_fault() {
        let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let stored = [(a, 1), (b, 1), (a, 2), (b, 2), (a, 3)];
        assert_eq!(sequence_faults(&stored, &HashSet::new()), []);
    }

    #[test]
    fn a_hole_is_a_fault_unless_the_relay_parked_that_event() {
        let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let stored = [(a, 1), (a, 2), (a, 5), (b, 1), (b, 3)];
        let parked = HashSet::from([(a, 3), (b, 2)]);
        assert_eq!(
            sequence_faults(&stored, &parked),
            [SequenceFault::Hole {
                user: a,
                missing: vec![4]
            }]
        );
    }

    #[test]
    fn an_event_stored_after_a_newer_one_is_an_inversion() {
        let a = uuid::Uuid::now_v7();
        let stored = [(a, 1), (a, 3), (a, 2), (a, 4)];
        assert_eq!(
            sequence_faults(&stored, &HashSet::new()),
            [SequenceFault::Inverted {
                user: a,
                after: 3,
                then: 2
            }]
        );
    }
}
