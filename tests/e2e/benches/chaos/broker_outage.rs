//! Scenario 1: the broker stopped for 10 s, then started.

use crate::harness::{Parts, Row, Settings, all_alive, audit, first_2xx_after, start_load, warm_up};

/// 1: the broker stopped for 10 s; the outbox (in the user service) must
/// absorb it, so writes keep answering 2xx.
pub async fn broker_outage(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let mut parts = Parts::start().await?;
    let (mut services, load_users, load) = start_load(settings, &parts, 1, &parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    let outage = settings.secs(10, 10);
    tokio::task::block_in_place(|| parts.kafka.broker().kill());
    tokio::time::sleep(outage).await;
    tokio::task::block_in_place(|| parts.kafka.broker().restart())?;
    let restarted = load.now();
    tokio::time::sleep(settings.secs(10, 5)).await;
    let answers = load.stop().await;
    if let Some(took) = first_2xx_after(&answers, restarted) {
        row.recovered(took);
    }
    audit(row, &parts, &load_users, &answers).await?;
    row.check(
        row.server_errors == 0,
        format!(
            "writes keep answering 2xx through the outage ({} 5xx)",
            row.server_errors
        ),
    );
    all_alive(row, &mut services);
    Ok(())
}
