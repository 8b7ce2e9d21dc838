//! Scenario 4: one of two user-service replicas `kill -9`ed.

use crate::harness::{Parts, Row, Settings, after_the_first_replica_killed, start_load, warm_up};

/// 4: one of two user-service replicas `kill -9`ed: the API (given both in
/// `USER_SERVICE_URL`) answers from the other.
pub async fn replica_killed(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let parts = Parts::start().await?;
    let (mut services, load_users, load) = start_load(settings, &parts, 2, &parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    let killed = load.now();
    services.users[0].1.kill();
    // A request sent before the replica was gone may have reached it.
    let dead = load.now();
    after_the_first_replica_killed(settings, row, &parts, services, &load_users, load, (killed, dead)).await
}
