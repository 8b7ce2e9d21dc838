//! The end-to-end write ceiling: updates through the API, the user service
//! and its outbox, the relay, Kafka and the consumer to the event row, at a
//! rate raised step by step until the lag from the API's answer to the row
//! has a p99 past [`LAG_P99`]. The ceiling is the last rate below it; the
//! stage that saturated first is the one whose backlog had grown the most
//! at the step past it.

use std::time::{Duration, SystemTime};

use callchain_e2e::{load::percentile, stack::Stack};
use tokio::time::Instant;

use super::limits::{Limits, Spread};

/// The lag's p99 the ceiling stays under.
const LAG_P99: f64 = 100.0;

/// The lowest rate tried: below it the ceiling is given as 0.
const MIN_RATE: u64 = 20;

/// Where a step's writes stood when its load ended.
struct Step {
    rate: u64,
    answered: f64,
    p99: f64,
    /// Events still in the outbox when the load ended: the relay's backlog.
    outbox: i64,
    /// Events answered but not yet stored when the load ended, less the
    /// outbox's: Kafka's and the consumer's backlog.
    unconsumed: i64,
    /// Updates not answered 200.
    failed: usize,
}

/// Raises the rate from `start` (unset: a third of the user service's raw
/// transaction rate; halved first while even it is past the bound) by a
/// quarter each step, `seconds` a step,
/// [`super::limits::RUNS`] times; prints each ceiling and the stage that
/// saturated, as a fraction of its limit.
pub async fn ceiling(limits: Option<&Limits>, start: Option<u64>, seconds: u64) -> anyhow::Result<()> {
    let start = start
        .or_else(|| limits.map(|limits| (limits.user.median() / 3.0) as u64))
        .unwrap_or(200)
        .max(MIN_RATE);
    println!(
        "== the write ceiling: PATCH /v1/users/{{id}} through the outbox to the event row, from {start}/s, the rate \
         raised by a quarter every {seconds} s until the lag's p99 passes {LAG_P99} ms"
    );
    let mut ceilings = Spread::default();
    let mut stages = Vec::new();
    for run in 0..super::limits::RUNS {
        let stack = Stack::start().await?;
        let admin = stack.admin_token().await;
        let ids = super::load_users(&stack, &format!("ceiling{run}-")).await;
        let mut rate = start;
        let mut below = None;
        let past = loop {
            let step = step(&stack, &admin, &ids, rate, seconds, &format!("c{run}r{rate}n")).await?;
            println!(
                "   run {}: {rate}/s offered, {:.0}/s answered, lag p99 {:.1} ms; at the load's end {} in the outbox, {} \
                 past it not yet stored; {} failed",
                run + 1,
                step.answered,
                step.p99,
                step.outbox,
                step.unconsumed,
                step.failed
            );
            if step.p99 > LAG_P99 || step.failed > 0 || step.answered < 0.95 * step.rate as f64 {
                // Past it already at the start: the rate is halved until a
                // step stays under the bound, then raised again from there.
                if below.is_none() && rate / 2 >= MIN_RATE {
                    rate /= 2;
                    stack.wait_until_published(Duration::from_secs(120)).await?;
                    stack.kafka.wait_until_consumed(Duration::from_secs(120)).await?;
                    continue;
                }
                break step;
            }
            below = Some(step.rate);
            rate += rate / 4;
            // Every event of the step is stored before the next begins.
            stack.wait_until_published(Duration::from_secs(120)).await?;
            stack.kafka.wait_until_consumed(Duration::from_secs(120)).await?;
        };
        let ceiling = below.unwrap_or(0) as f64;
        let stage = if past.answered < 0.95 * past.rate as f64 || past.failed > 0 {
            (
                "the API and the user service's transaction",
                limits.map(|l| l.user.median()),
            )
        } else if past.outbox >= past.unconsumed {
            ("the outbox relay", None)
        } else {
            ("Kafka and the consumer", limits.map(Limits::consumer))
        };
        println!(
            "   run {}: ceiling {ceiling:.0} updates/s; past it, {} saturated first{}",
            run + 1,
            stage.0,
            stage
                .1
                .map(|limit| format!(" (at {:.2} of its raw limit, {limit:.0}/s)", past.answered / limit))
                .unwrap_or_default()
        );
        ceilings.0.push(ceiling);
        stages.push(stage.0);
        drop(stack);
    }
    println!("   write ceiling: {ceilings} updates/s");
    if let Some(limits) = limits {
        println!(
            "   the ceiling as a fraction of the user service's raw transaction rate ({:.0}/s): {:.2}",
            limits.user.median(),
            ceilings.over(limits.user.median())
        );
    }
    println!("   saturated first, each run: {}\n", stages.join("; "));
    Ok(())
}

/// Updates at `rate` for `seconds`; the lag of each to its row.
async fn step(
    stack: &Stack,
    admin: &str,
    ids: &[String],
    rate: u64,
    seconds: u64,
    label: &str,
) -> anyhow::Result<Step> {
    let (updates, elapsed) = super::steady_updates(stack, admin, ids, (rate, seconds), label).await?;
    let answered: std::collections::HashMap<String, SystemTime> = updates
        .iter()
        .filter(|update| update.ok)
        .map(|update| (update.name.clone(), update.answered))
        .collect();
    let failed = updates.len() - answered.len();
    let outbox = stack.outbox_len().await;
    let pattern = format!("{label}%");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM user_events WHERE payload->>'name' LIKE $1")
        .bind(&pattern)
        .fetch_one(stack.db.pool())
        .await?;
    let unconsumed = (answered.len() as i64 - stored - outbox).max(0);
    // The lag of every row, once they are all stored (or 30 s have passed).
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as("SELECT payload->>'name', written_at FROM user_events WHERE payload->>'name' LIKE $1")
                .bind(&pattern)
                .fetch_all(stack.db.pool())
                .await?;
        if rows.len() >= answered.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut lags: Vec<f64> = rows
        .iter()
        .filter_map(|(name, written)| {
            let answered = answered.get(name)?;
            Some(
                SystemTime::from(*written)
                    .duration_since(*answered)
                    .map_or(0.0, |lag| lag.as_secs_f64() * 1000.0),
            )
        })
        .collect();
    // A row never stored counts as past any bound.
    lags.extend(std::iter::repeat_n(
        f64::INFINITY,
        answered.len().saturating_sub(lags.len()),
    ));
    lags.sort_by(f64::total_cmp);
    Ok(Step {
        rate,
        answered: answered.len() as f64 / elapsed,
        p99: percentile(&lags, 99.0),
        outbox,
        unconsumed,
        failed,
    })
}
