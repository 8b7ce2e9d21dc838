use callchain_api::Config;
use callchain_runtime::env::Env;

#[global_allocator]
static ALLOCATOR: callchain_runtime::Allocator = callchain_runtime::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    let config = Config::from_env(&env)?;
    if std::env::args().any(|arg| arg == "--healthcheck") {
        return callchain_api::healthcheck(config.listen_addr).await;
    }
    let _telemetry = callchain_telemetry::init(&env, "api")?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr).await?;
    let result = callchain_api::run(config, listener, callchain_runtime::lifecycle::shutdown_signal()).await;
    if let Err(error) = &result {
        tracing::error!(error = &**error as &dyn std::error::Error, "api failed");
    }
    result
}
