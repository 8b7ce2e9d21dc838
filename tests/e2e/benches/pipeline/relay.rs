//! `BENCH_ONLY=relay`: the outbox relay's ceiling. The user services (each
//! with its relay) run idle on a fresh database; one transaction then puts
//! `BENCH_RELAY_EVENTS` outbox rows in place, as the user service writes
//! them (the events of 1000 users, each user's in sequence order, the
//! writes of the users interleaved, a request's `traceparent` on each), and
//! the clock runs from its commit until the outbox is empty: every row
//! acknowledged by the broker and deleted. With one user service and with
//! two on the same database, each with one shard (one lock for the whole
//! outbox: how the relay was before shards) and with the default 8; three
//! runs each (and a warm-up), min, median and max. Spans are recorded, none
//! exported: the figure is the relay's, not the export's.

use std::time::{Duration, Instant};

use callchain_e2e::stack::{UserSettings, spawn_user_with};
use callchain_events::{EventType, UserEvent, UserPayload};
use callchain_telemetry::Export;
use callchain_testkit::{kafka::Kafka, postgres::TestDatabase, service::ServiceHandle};

/// The users whose events fill the outbox.
const USERS: u64 = 1000;
/// Timed runs per arrangement.
const RUNS: usize = 3;
/// `RELAY_SHARDS`' default, as the user service states it.
fn default_shards() -> u32 {
    callchain_user::config::RELAY_SHARDS
        .default
        .and_then(|shards| shards.parse().ok())
        .expect("RELAY_SHARDS has a numeric default")
}

/// One arrangement of relays: how many user services, with how many shards.
struct Setup {
    replicas: usize,
    shards: u32,
    db: TestDatabase,
    kafka: Kafka,
    services: Vec<ServiceHandle>,
    rates: Vec<f64>,
}

/// Runs the relay's bench with 1 and 2 user-service replicas, with one shard
/// (one lock for the whole outbox, as before shards) and with
/// `RELAY_SHARDS`' default, the four taking turns run by run so that what
/// slows a shared machine meanwhile slows them alike; prints each run and
/// each's min/median/max.
pub async fn relay_ceiling(events: u64) -> anyhow::Result<()> {
    println!("== relay: {events} outbox rows of {USERS} users, from commit to all acknowledged and deleted");
    let mut setups = Vec::new();
    let shards = default_shards();
    for (replicas, shards) in [(1, 1), (2, 1), (1, shards), (2, shards)] {
        let db = TestDatabase::create().await?;
        let kafka = Kafka::shared().await?;
        let mut services = Vec::new();
        for _ in 0..replicas {
            services.push(spawn_relay(&db, &kafka, shards).await?);
        }
        setups.push(Setup {
            replicas,
            shards,
            db,
            kafka,
            services,
            rates: Vec::new(),
        });
    }
    // Two claim intervals of the relay: the replicas have shared out the
    // shards. Then a warm-up each.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for setup in &setups {
        drain(&setup.db, &setup.kafka, events / 10).await?;
    }
    for _ in 0..RUNS {
        for setup in &mut setups {
            let took = drain(&setup.db, &setup.kafka, events).await?;
            setup.rates.push(events as f64 / took.as_secs_f64());
        }
    }
    for setup in &mut setups {
        for service in &mut setup.services {
            service.stop().await?;
        }
        let rates = &mut setup.rates;
        rates.sort_by(f64::total_cmp);
        println!(
            "   {} user-service replica{}, {} shard{}{}: relay events/s min {:.0}, median {:.0}, max {:.0} (runs: {})",
            setup.replicas,
            if setup.replicas == 1 { "" } else { "s" },
            setup.shards,
            if setup.shards == 1 { "" } else { "s" },
            if setup.shards == 1 { " (one lock)" } else { "" },
            rates[0],
            rates[rates.len() / 2],
            rates[rates.len() - 1],
            rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ")
        );
    }
    println!();
    Ok(())
}

/// A user service (and its relay) on `db` with `shards` relay shards.
async fn spawn_relay(db: &TestDatabase, kafka: &Kafka, shards: u32) -> anyhow::Result<ServiceHandle> {
    let settings: UserSettings = std::sync::Arc::new(move |config| config.relay_shards = shards);
    spawn_user_with(db, kafka, "127.0.0.1:0".parse()?, Export::Discard, Some(&settings)).await
}

/// Commits `count` outbox rows in one transaction and waits until the
/// relays have emptied the outbox; the time from the commit.
async fn drain(db: &TestDatabase, kafka: &Kafka, count: u64) -> anyhow::Result<Duration> {
    let users: Vec<uuid::Uuid> = (0..USERS.min(count)).map(|_| uuid::Uuid::now_v7()).collect();
    let mut columns = Columns::default();
    for n in 0..count {
        let user = users[(n % users.len() as u64) as usize];
        let sequence = 1 + n / users.len() as u64;
        let event = UserEvent::new(
            EventType::UserUpdated,
            uuid::Uuid::now_v7(),
            chrono::Utc::now(),
            user,
            sequence,
            UserPayload {
                email: format!("relay{n}@example.com"),
                name: format!("Relay {n}"),
                role: "USER".into(),
            },
        );
        columns.event_ids.push(event.event_id);
        columns.keys.push(event.key());
        columns.payloads.push(event.to_json());
        columns
            .traceparents
            .push(format!("00-{:032x}-{:016x}-01", uuid::Uuid::new_v4().as_u128(), n + 1));
        columns.sequences.push(sequence as i64);
    }
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, key, event_type, payload, traceparent, sequence) \
         SELECT event_id, $2, key, 'user.updated', payload, traceparent, sequence \
         FROM UNNEST($1::uuid[], $3::text[], $4::bytea[], $5::text[], $6::bigint[]) \
           AS r (event_id, key, payload, traceparent, sequence)",
    )
    .bind(&columns.event_ids)
    .bind(&kafka.topic)
    .bind(&columns.keys)
    .bind(&columns.payloads)
    .bind(&columns.traceparents)
    .bind(&columns.sequences)
    .execute(db.pool())
    .await?;
    let committed = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(db.pool())
            .await?;
        if waiting == 0 {
            return Ok(committed.elapsed());
        }
        anyhow::ensure!(
            committed.elapsed() < Duration::from_secs(300),
            "{waiting} of {count} outbox rows still waiting after 5 min"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The outbox rows of a run, column by column, for one `UNNEST` insert.
#[derive(Default)]
struct Columns {
    event_ids: Vec<uuid::Uuid>,
    keys: Vec<String>,
    payloads: Vec<Vec<u8>>,
    traceparents: Vec<String>,
    sequences: Vec<i64>,
}
