//! Scenario 2: the consumer `kill -9`ed 10 times in a row, mid-stream.

use std::time::{Duration, Instant};

use crate::harness::{Parts, RECOVERY_BOUND, Row, Settings, all_alive, audit, caught_up, start_load, warm_up};

/// 2: the consumer `kill -9`ed ten times in a row, restarted at once each time.
pub async fn consumer_kills(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let parts = Parts::start().await?;
    let (mut services, load_users, load) = start_load(settings, &parts, 1, &parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    let mut slowest = Duration::ZERO;
    let mut unrecovered = 0;
    for _ in 0..10 {
        tokio::time::sleep(settings.secs(3, 1)).await;
        services.consumer.1.kill();
        let restarted = Instant::now();
        services.consumer.1 = services.consumer.0.start().await?;
        // Back at the head: every change acknowledged by the restart written.
        let target = load.acknowledged();
        match caught_up(&parts.db, target, RECOVERY_BOUND * 3).await {
            Some(_) => slowest = slowest.max(restarted.elapsed()),
            None => unrecovered += 1,
        }
    }
    row.recovered(slowest);
    let answers = load.stop().await;
    audit(row, &parts, &load_users, &answers).await?;
    row.must(
        unrecovered == 0 && slowest <= RECOVERY_BOUND,
        format!("each restart back at the head within {RECOVERY_BOUND:?} (slowest {slowest:.1?}, {unrecovered} never)"),
    );
    all_alive(row, &mut services);
    Ok(())
}
