use callchain_runtime::{env::Env, lifecycle};
use callchain_user::Config;

#[global_allocator]
static ALLOCATOR: callchain_runtime::Allocator = callchain_runtime::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    callchain_runtime::tune_allocator();
    let env = Env::from_process();
    let config = Config::from_env(&env)?;
    if std::env::args().any(|arg| arg == "--healthcheck") {
        return callchain_user::healthcheck(config.listen_addr).await;
    }
    let bound = lifecycle::shutdown_timeout(&env)?;
    let telemetry = callchain_telemetry::init(&env, "user")?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr).await?;
    match lifecycle::run_until_signal(bound, |signal| callchain_user::run(config, listener, signal)).await {
        Ok(result) => {
            if let Err(error) = &result {
                tracing::error!(error = &**error as &dyn std::error::Error, "user service failed");
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
