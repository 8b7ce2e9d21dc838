//! Scenario 5: the user service slowed past the request deadline, then
//! healed.

use std::time::Duration;

use crate::harness::{
    Answer, Outcome, Parts, Row, SHUTDOWN_BOUND, Services, Settings, all_alive, audit, first_2xx_after, start_load,
    warm_up,
};

/// The API's whole budget for a request, in the slow-user scenario.
const DEADLINE_MS: u64 = 1000;

/// 5: the user service slowed past the API's deadline: 504 within the
/// deadline + 50 ms; the breaker opens (503 at once) and closes once the
/// service is healed (restarted without the fault).
pub async fn slow_user(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let parts = Parts::start().await?;
    // Two replicas named to the API, so that the fault comes and goes
    // without a moment when no user service listens: the API's answers in
    // the slow phase are the slowness's alone, not a restart's.
    let (mut services, load_users, load) = start_load(settings, &parts, 2, &parts.otlp.endpoint(), |api| {
        api.with("REQUEST_TIMEOUT_MS", DEADLINE_MS.to_string())
    })
    .await?;
    warm_up(settings).await;

    // The second replica turns slow while the first serves; then the first
    // stops, and every call meets the slow one.
    let slowed = load.now();
    restart_user(&mut services, 1, Some(DEADLINE_MS + 500)).await?;
    rejoin().await;
    stop_user(&mut services, 0).await?;
    tokio::time::sleep(settings.secs(10, 5)).await;

    // Healed: the first comes back as it was, then the slow one leaves and
    // comes back healthy.
    let healed = load.now();
    start_user(&mut services, 0).await?;
    rejoin().await;
    restart_user(&mut services, 1, None).await?;
    tokio::time::sleep(settings.secs(10, 5)).await;
    let answers = load.stop().await;
    let recovered = first_2xx_after(&answers, healed);
    if let Some(took) = recovered {
        row.recovered(took);
    }
    audit(row, &parts, &load_users, &answers).await?;

    let during: Vec<&Answer> = answers.iter().filter(|a| a.sent >= slowed && a.sent < healed).collect();
    let timeouts: Vec<&&Answer> = during
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Status(504)))
        .collect();
    let slowest_504 = timeouts.iter().map(|a| a.latency).max().unwrap_or_default();
    let bound = Duration::from_millis(DEADLINE_MS + 50);
    row.check(
        !timeouts.is_empty() && slowest_504 <= bound,
        format!(
            "{} answers 504, the slowest in {slowest_504:.1?} (bound {bound:?})",
            timeouts.len()
        ),
    );
    // Once open, the breaker answers at once: in the second half of the
    // slow phase, most answers are 503s that took no time. (A 503 while the
    // service was being restarted is no sign of a breaker.)
    let open_phase = slowed + (healed - slowed) / 2;
    let late: Vec<&&Answer> = during.iter().filter(|a| a.sent >= open_phase).collect();
    let fast_503 = late
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Status(503)) && a.latency < Duration::from_millis(50))
        .count();
    row.check(
        !late.is_empty() && fast_503 * 2 > late.len(),
        format!(
            "the breaker is open: {fast_503} of the last {} answers of the slow phase are 503 at once",
            late.len()
        ),
    );
    row.must(
        recovered.is_some(),
        "writes answer 2xx again once the service is healed",
    );
    all_alive(row, &mut services);
    Ok(())
}

/// Restarts user replica `index`, with `FAULT_LATENCY_MS` when `latency_ms`
/// is given (its spec keeps none, so a restart with `None` heals it); the
/// other replica serves meanwhile.
async fn restart_user(services: &mut Services, index: usize, latency_ms: Option<u64>) -> anyhow::Result<()> {
    stop_user(services, index).await?;
    let (spec, process) = &mut services.users[index];
    let spec = match latency_ms {
        Some(latency) => spec.clone().with("FAULT_LATENCY_MS", latency.to_string()),
        None => spec.clone(),
    };
    *process = spec.start().await?;
    Ok(())
}

/// Waits until the API has health-checked a replica that came back (it
/// checks every half second), so stopping the other leaves one serving.
async fn rejoin() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// Stops user replica `index` with SIGTERM and waits for it to exit.
async fn stop_user(services: &mut Services, index: usize) -> anyhow::Result<()> {
    let process = &mut services.users[index].1;
    process.terminate()?;
    process.wait_exit(SHUTDOWN_BOUND + Duration::from_secs(1)).await?;
    Ok(())
}

/// Starts user replica `index` again, as its spec says.
async fn start_user(services: &mut Services, index: usize) -> anyhow::Result<()> {
    let (spec, process) = &mut services.users[index];
    *process = spec.start().await?;
    Ok(())
}
