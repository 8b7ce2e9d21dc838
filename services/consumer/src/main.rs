use callchain_consumer::Config;
use callchain_runtime::{env::Env, lifecycle};

#[global_allocator]
static ALLOCATOR: callchain_runtime::Allocator = callchain_runtime::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    callchain_runtime::tune_allocator();
    let env = Env::from_process();
    let config = Config::from_env(&env)?;
    if std::env::args().any(|arg| arg == "--healthcheck") {
        return callchain_consumer::healthcheck(config.health_addr).await;
    }
    let bound = config.shutdown_timeout;
    let telemetry = callchain_telemetry::init(&env, "consumer")?;
    let listener = tokio::net::TcpListener::bind(config.health_addr).await?;
    match lifecycle::run_until_signal(bound, |signal| callchain_consumer::run(config, listener, signal)).await {
        Ok(result) => {
            if let Err(error) = &result {
                tracing::error!(error = &**error as &dyn std::error::Error, "consumer failed");
            }
            // Dropping the guard exports the spans still queued.
            result
        }
        Err(timed_out) => {
            // Logged by the lifecycle; what is still running is abandoned,
            // so the process exits now rather than when its last task does.
            drop(telemetry);
            eprintln!("{timed_out}");
            std::process::exit(1)
        }
    }
}
