//! The outbox relay sharded over two user-service replicas on one database:
//! both publish (each holds some of the shards), every user's events arrive
//! in sequence order without a hole, and a replica killed mid-stream has its
//! shards taken by the other with nothing lost.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use callchain_e2e::{
    order::stored_sequence_faults,
    stack::{Options, Stack},
};
use callchain_testkit::service::ServiceHandle;
use serde_json::json;

use crate::helpers::{PASSWORD, email};

/// What a relay logs when the shards it publishes change.
const SHARDS_CHANGED: &str = "the outbox relay publishes these shards";
/// `RELAY_SHARDS`' default, which the test services run with.
const SHARDS: usize = 8;
const USERS: usize = 16;

/// The shards `service`'s relay said it publishes last (after its first
/// `skip` log lines); empty if it said nothing.
fn shards_of(service: &ServiceHandle, skip: usize) -> BTreeSet<usize> {
    service
        .logs
        .lines()
        .iter()
        .skip(skip)
        .filter(|line| line["message"] == SHARDS_CHANGED)
        .filter_map(|line| line["shards"].as_str().map(str::to_owned))
        .next_back()
        .map(|shards| {
            shards
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

async fn two_replicas() -> Stack {
    match Stack::start_with(Options {
        more_replicas: 1,
        ..Options::default()
    })
    .await
    {
        Ok(stack) => stack,
        Err(error) => panic!("cannot start the test stack: {error:#}"),
    }
}

/// Waits until the two relays hold every shard between them, each some;
/// their shards.
async fn shared_out(stack: &Stack) -> [BTreeSet<usize>; 2] {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shares = [shards_of(&stack.user, 0), shards_of(&stack.replicas[0], 0)];
        if shares.iter().all(|s| !s.is_empty())
            && shares[0].is_disjoint(&shares[1])
            && shares[0].len() + shares[1].len() == SHARDS
        {
            return shares;
        }
        assert!(
            Instant::now() < deadline,
            "the two relays should share the {SHARDS} shards, each publishing some: they hold {shares:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registers [`USERS`] users; their ids.
async fn users(stack: &Stack) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..USERS {
        let user = stack.register(&email("sharded"), PASSWORD).await;
        ids.push(user["id"].as_str().expect("an id").to_owned());
    }
    ids
}

/// Renames each of `ids` (each user's writes one after the other, the users
/// side by side) until `stop`; how many writes the API acknowledged.
fn write_until(
    stack: &Stack,
    token: &str,
    ids: &[String],
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    ids.iter()
        .map(|id| {
            let (http, url, token, stop) = (
                stack.http.clone(),
                stack.url(&format!("/v1/users/{id}")),
                token.to_owned(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut acknowledged = 0;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let answer = http
                        .patch(&url)
                        .bearer_auth(&token)
                        .json(&json!({ "name": format!("Sharded {n}") }))
                        .send()
                        .await;
                    if answer.is_ok_and(|a| a.status().is_success()) {
                        acknowledged += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acknowledged
            })
        })
        .collect()
}

/// Waits until every write of `ids` has its event row (each user's newest
/// stored sequence is its version), then checks every user's rows are in
/// order without a hole.
async fn assert_every_event_stored_in_order(stack: &Stack, ids: &[String]) {
    stack
        .wait_until_published(Duration::from_secs(60))
        .await
        .expect("the relays publish the whole outbox");
    let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.parse().expect("a user id")).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let behind: Vec<(uuid::Uuid, i64, Option<i64>)> = sqlx::query_as(
            "SELECT u.id, u.version, (SELECT max(e.sequence) FROM user_events e WHERE e.user_id = u.id) \
             FROM users u WHERE u.id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(stack.db.pool())
        .await
        .expect("reading versions");
        let behind: Vec<_> = behind.into_iter().filter(|(_, v, s)| Some(*v) != *s).collect();
        if behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "users whose newest event is not stored (id, version, newest stored): {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let faults = stored_sequence_faults(stack.db.pool())
        .await
        .expect("reading user_events");
    assert!(faults.is_empty(), "events out of order or missing: {faults:?}");
}

/// How it failed before the shards: one lock for the whole outbox, so no
/// relay ever held a shard ("the two relays should share the 8 shards ...:
/// they hold [{}, {}]").
#[tokio::test(flavor = "multi_thread")]
async fn two_relays_each_publish_their_shards_and_every_users_events_arrive_in_order_without_a_hole() {
    let stack = two_replicas().await;
    let shares = shared_out(&stack).await;
    let ids = users(&stack).await;
    let token = stack.admin_token().await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = write_until(&stack, &token, &ids, &stop);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        assert!(writer.await.expect("a writer") > 0, "every user was written to");
    }
    assert_every_event_stored_in_order(&stack, &ids).await;
    // Each relay published some: each holds the shard of some written user.
    let user_shards: BTreeSet<usize> =
        sqlx::query_scalar::<_, i32>("SELECT (hashtext(id::text) & 2147483647) % $2 FROM users WHERE id = ANY($1)")
            .bind(
                ids.iter()
                    .map(|id| id.parse().expect("an id"))
                    .collect::<Vec<uuid::Uuid>>(),
            )
            .bind(SHARDS as i32)
            .fetch_all(stack.db.pool())
            .await
            .expect("the users' shards")
            .into_iter()
            .map(|shard| shard as usize)
            .collect();
    for (relay, shards) in ["user", "its replica"].iter().zip(&shares) {
        assert!(
            !shards.is_disjoint(&user_shards),
            "{relay}'s relay holds shards {shards:?}, none of a written user's ({user_shards:?})"
        );
    }
}

/// How it failed before the shards: as above, no relay held a shard.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_relays_shards_are_taken_by_the_other_and_no_event_is_lost_or_reordered() {
    let mut stack = two_replicas().await;
    shared_out(&stack).await;
    let ids = users(&stack).await;
    let token = stack.admin_token().await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = write_until(&stack, &token, &ids, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = stack.user.logs.lines().len();
    // Mid-stream, abruptly: its tasks dropped where they stand, its
    // connections closed with them.
    stack.replicas[0].kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    while shards_of(&stack.user, before).len() < SHARDS {
        assert!(
            Instant::now() < deadline,
            "the surviving relay should take all {SHARDS} shards once the other is killed; it holds {:?}",
            shards_of(&stack.user, 0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("a writer");
    }
    assert_every_event_stored_in_order(&stack, &ids).await;
}
