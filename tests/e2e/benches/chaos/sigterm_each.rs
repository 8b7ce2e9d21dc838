//! Scenario 7: SIGTERM to each service in turn, under load.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use callchain_testkit::spans::SpanKind;

use crate::harness::{Outcome, Parts, Row, SHUTDOWN_BOUND, Settings, audit, start_load, warm_up};

/// 7: SIGTERM to each service in turn, under load, each started again
/// after it exits: no accepted request is cut off, every answered request's
/// spans arrive, and each service exits 0 within the bound.
pub async fn sigterm_each(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let parts = Parts::start().await?;
    let (mut services, load_users, load) = start_load(settings, &parts, 1, &parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    let mut exits = Vec::new();
    let mut slowest_restart = Duration::ZERO;
    for which in ["consumer", "user1", "api"] {
        let (spec, process) = match which {
            "consumer" => &mut services.consumer,
            "api" => &mut services.api,
            _ => &mut services.users[0],
        };
        let signalled = Instant::now();
        process.terminate()?;
        let status = process.wait_exit(SHUTDOWN_BOUND + Duration::from_secs(2)).await;
        let took = signalled.elapsed();
        exits.push((
            spec.name.clone(),
            status.as_ref().is_ok_and(|s| s.success()) && took <= SHUTDOWN_BOUND,
            took,
        ));
        *process = spec.start().await?;
        slowest_restart = slowest_restart.max(signalled.elapsed());
        tokio::time::sleep(settings.secs(5, 2)).await;
    }
    let answers = load.stop().await;
    row.recovered(slowest_restart);
    // Every service flushes its last spans on the way out.
    let stopped = services.stop().await;
    audit(row, &parts, &load_users, &answers).await?;
    for (name, clean, took) in exits {
        row.must(
            clean,
            format!("{name} exited 0 within {SHUTDOWN_BOUND:?} of SIGTERM ({took:.1?})"),
        );
    }
    for (name, clean) in stopped {
        row.must(clean, format!("{name} exited 0 at the end"));
    }
    let refused = answers.iter().filter(|a| matches!(a.outcome, Outcome::Refused)).count();
    eprintln!("    {refused} requests refused while the API was down (never accepted)");
    // The spans of the completed requests: the API's server span of each.
    let served: BTreeSet<String> = parts
        .otlp
        .spans()
        .into_iter()
        .filter(|span| span.kind == SpanKind::Server && span.service == "api")
        .map(|span| span.trace_id)
        .collect();
    let answered: Vec<&String> = answers
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Status(_)))
        .filter_map(|a| a.trace_id.as_ref())
        .collect();
    let missing = answered.iter().filter(|id| !served.contains(**id)).count();
    row.must(
        missing == 0,
        format!(
            "the API's span of every answered request arrived ({missing} of {} missing)",
            answered.len()
        ),
    );
    Ok(())
}
