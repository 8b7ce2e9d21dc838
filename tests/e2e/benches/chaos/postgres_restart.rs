//! Scenario 3: Postgres restarted (the machine's cluster: every database on
//! it).

use std::time::Duration;

use anyhow::Context as _;

use crate::harness::{
    Answer, Outcome, Parts, Row, Settings, all_alive, audit, caught_up, first_2xx_after, start_load, warm_up,
};

/// 3: the machine's Postgres restarted; every service recovers without a
/// restart, answering 503 (and only 503) meanwhile.
pub async fn postgres_restart(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let parts = Parts::start().await?;
    let (mut services, load_users, load) = start_load(settings, &parts, 1, &parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    let began = load.now();
    restart_postgres()?;
    let back = load.now();
    eprintln!("    Postgres was down for {:.1?}", back - began);
    tokio::time::sleep(settings.secs(15, 8)).await;
    let target = load.acknowledged();
    let consumer_back = caught_up(&parts.db, target, Duration::from_secs(30)).await;
    let answers = load.stop().await;
    let recovered = first_2xx_after(&answers, back);
    if let Some(took) = recovered {
        row.recovered(took);
    }
    audit(row, &parts, &load_users, &answers).await?;
    let not_503: Vec<u16> = answers
        .iter()
        .filter_map(|a| match a.outcome {
            Outcome::Status(status @ 500..=599) if status != 503 => Some(status),
            _ => None,
        })
        .collect();
    row.check(not_503.is_empty(), format!("every 5xx is a 503 (others: {not_503:?})"));
    let last_5xx = answers
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Status(500..=599)))
        .map(Answer::done)
        .max();
    let reconnect = Duration::from_secs(5);
    row.check(
        last_5xx.is_none_or(|last| last <= back + reconnect),
        format!(
            "5xx stop within {reconnect:?} of Postgres being back (the last {})",
            last_5xx.map_or_else(
                || "never came".to_owned(),
                |last| format!("{:.1} s after", last.saturating_sub(back).as_secs_f64())
            )
        ),
    );
    row.must(recovered.is_some(), "the API answers 2xx again by itself");
    row.must(consumer_back.is_some(), "the consumer writes again by itself");
    all_alive(row, &mut services);
    Ok(())
}

/// Restarts the machine's first Postgres cluster, as scripts/ensure-postgres.sh
/// finds it.
pub(crate) fn restart_postgres() -> anyhow::Result<()> {
    let clusters = std::process::Command::new("pg_lsclusters")
        .arg("--no-header")
        .output()?;
    let text = String::from_utf8_lossy(&clusters.stdout);
    let mut first = text.lines().next().context("no Postgres cluster")?.split_whitespace();
    let (version, name) = (first.next().context("a version")?, first.next().context("a name")?);
    let status = std::process::Command::new("pg_ctlcluster")
        .args([version, name, "restart"])
        .status()?;
    anyhow::ensure!(status.success(), "pg_ctlcluster {version} {name} restart failed");
    Ok(())
}
