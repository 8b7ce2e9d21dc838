//! Scenario 4: one of two user-service replicas `kill -9`ed.

use crate::harness::{Parts, Row, Settings, all_alive, audit, first_2xx_after, start_load, warm_up};

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
    tokio::time::sleep(settings.secs(10, 5)).await;
    let answers = load.stop().await;
    if let Some(took) = first_2xx_after(&answers, killed) {
        row.recovered(took);
    }
    audit(row, &parts, &load_users, &answers).await?;
    // In flight at the kill: sent before the replica was gone, answered
    // after the kill began.
    let in_flight = answers.iter().filter(|a| a.sent <= dead && a.done() >= killed).count();
    row.check(
        row.server_errors <= in_flight,
        format!(
            "no 5xx beyond the {in_flight} requests in flight ({} 5xx)",
            row.server_errors
        ),
    );
    services.users.remove(0);
    all_alive(row, &mut services);
    Ok(())
}
