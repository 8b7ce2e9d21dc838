use callchain_runtime::env::Env;
use callchain_user::Config;

#[global_allocator]
static ALLOCATOR: callchain_runtime::Allocator = callchain_runtime::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    let config = Config::from_env(&env)?;
    if std::env::args().any(|arg| arg == "--healthcheck") {
        return callchain_user::healthcheck(config.listen_addr).await;
    }
    let _telemetry = callchain_telemetry::init(&env, "user")?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr).await?;
    let result = callchain_user::run(config, listener, callchain_runtime::lifecycle::shutdown_signal()).await;
    if let Err(error) = &result {
        tracing::error!(error = &**error as &dyn std::error::Error, "user service failed");
    }
    result
}
