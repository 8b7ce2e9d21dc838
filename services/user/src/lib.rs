//! The user service: `user.v1.UserService` over gRPC, on Postgres.
//!
//! - [`config`]: settings from the environment.
//! - `service`: the gRPC handlers; requests are parsed into domain types here.
//! - `store`: every SQL statement of a request, each in its own database
//!   client span; a write's event goes into the outbox in its transaction.
//! - `relay`: publishes the outbox to Kafka, woken by each commit, one
//!   user's events in order; parks what Kafka refuses for good.
//! - `password`: argon2id hashing, off the async workers, a bounded number
//!   at once.
//! - `error`: the one error type and its mapping to gRPC status codes.
//! - `fault`: latency and errors injected for chaos runs, as a tower layer.
//!
//! [`run`] connects, migrates, starts the relay and serves on a listener it
//! is given, until the shutdown future resolves, so `main` and the tests
//! start it the same way; [`Config`] tells the shared runner
//! (`callchain_runtime::runner`) how to start it as a process.

pub mod config;
mod error;
pub mod fault;
mod password;
mod relay;
mod service;
pub mod store;

use std::{future::Future, net::SocketAddr};

use anyhow::Context as _;
use callchain_domain::{Email, Password, UserId, UserName};
use callchain_proto::user::v1::user_service_server::UserServiceServer;
use callchain_runtime::env::{ExposeSecret as _, SecretString};
use callchain_telemetry::grpc::GrpcServerLayer;
use sqlx::PgPool;
use tokio::net::TcpListener;

pub use config::Config;
use fault::{FaultLayer, Faults};
pub use service::UserGrpc;

/// Connects, migrates, creates the configured administrator, starts the
/// outbox relay, and serves on `listener` until `shutdown` resolves;
/// in-flight calls drain first, then the relay finishes its round.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let pool = connect(&config).await?;
    if let Some((email, password)) = &config.admin {
        ensure_admin(&pool, email, password, |password| async move {
            password::Hasher::new(1).hash(password, None).await
        })
        .await?;
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(relay::Relay::new(pool.clone(), &config)?.run(stopped));
    let service = UserGrpc::new(
        pool,
        config.kafka_topic.clone(),
        password::Hasher::new(config.password_hash_concurrency),
    );
    let served = serve_with_faults(listener, service, &config.faults, shutdown).await;
    let _ = stop.send(true);
    relay.await.context("the outbox relay panicked")?;
    served
}

/// A pool on `DATABASE_URL`, with the user service's migrations applied.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    callchain_runtime::db::open(
        &config.database_url,
        config.max_connections,
        sqlx::migrate!("./migrations"),
        "the user service's database (DATABASE_URL)",
    )
    .await
}

/// Creates the administrator `email` unless a user has that email already;
/// only then is `password` hashed, with `hash` (one `password::Hasher`'s; the tests
/// count its calls).
async fn ensure_admin<H, F>(pool: &PgPool, email: &str, password: &SecretString, hash: H) -> anyhow::Result<()>
where
    H: FnOnce(Password) -> F,
    F: Future<Output = Result<String, error::UserError>>,
{
    let email = Email::parse(email).context("ADMIN_EMAIL")?;
    let password = Password::parse(password.expose_secret()).context("ADMIN_PASSWORD")?;
    // Every start after the first finds the administrator in place. Hashing
    // its password again for nothing (argon2 costs CPU on purpose: a tenth of
    // a second, and several on a busy host) kept each restart from serving.
    let mut conn = pool.acquire().await?;
    if store::get_credentials(&mut conn, &email).await?.is_some() {
        return Ok(());
    }
    let admin = store::NewUser {
        id: UserId::new(),
        email,
        name: UserName::parse("Administrator")?,
        password_hash: hash(password).await?,
        role: callchain_domain::Role::Admin,
    };
    if store::ensure_admin(&mut conn, &admin).await? {
        tracing::info!(user_id = %admin.id, "administrator created");
    }
    Ok(())
}

/// Serves `user.v1.UserService`, gRPC health and reflection on `listener`;
/// writes put their events on `topic` (through the outbox).
pub async fn serve(
    listener: TcpListener,
    pool: PgPool,
    topic: String,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let hasher = password::Hasher::new(config::default_hash_concurrency());
    serve_with_faults(
        listener,
        UserGrpc::new(pool, topic, hasher),
        &Faults::default(),
        shutdown,
    )
    .await
}

/// [`serve`], with `faults` injected into every `UserService` call.
async fn serve_with_faults(
    listener: TcpListener,
    service: UserGrpc,
    faults: &Faults,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    if faults.is_active() {
        tracing::warn!(
            latency_ms = faults.latency.as_millis() as u64,
            error_rate = faults.error_rate,
            "faults are injected into every UserService call (FAULT_LATENCY_MS, FAULT_ERROR_RATE)"
        );
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<UserServiceServer<UserGrpc>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(callchain_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };

    tracing::info!(addr = %listener.local_addr()?, "user service listening");
    tonic::transport::Server::builder()
        .layer(GrpcServerLayer::default())
        // Inside the server span, so a trace shows the injected delay.
        .layer(FaultLayer::new(faults.clone()))
        .add_service(health_service)
        // Both reflection versions: grpcurl and other tools still ask v1alpha.
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(UserServiceServer::new(service))
        // Every answer is written at once (no Nagle delay behind the
        // caller's delayed acknowledgement).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    tracing::info!("user service stopped");
    Ok(())
}

/// Asks the service at `addr` whether it is serving (gRPC health): the
/// container health check, which needs no tool the image does not ship.
pub async fn healthcheck(addr: SocketAddr) -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let addr = callchain_runtime::lifecycle::probe_addr(addr);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: "user.v1.UserService".into(),
        })
        .await?;
    anyhow::ensure!(response.get_ref().status() == ServingStatus::Serving, "not serving");
    Ok(())
}

/// What the shared runner (`callchain_runtime::runner`) needs to start
/// the user service as a process.
impl callchain_runtime::runner::Service for Config {
    const NAME: &'static str = "user";

    fn from_env(env: &callchain_runtime::env::Env) -> anyhow::Result<Self> {
        Config::from_env(env)
    }

    fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    async fn healthcheck(addr: SocketAddr) -> anyhow::Result<()> {
        healthcheck(addr).await
    }

    async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: callchain_runtime::lifecycle::BoxedSignal,
    ) -> anyhow::Result<()> {
        run(self, listener, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use callchain_testkit::postgres::TestDatabase;

    use super::*;

    const ADMIN: &str = "admin@example.com";

    #[tokio::test]
    async fn a_restart_finds_the_administrator_in_place_and_hashes_no_password() {
        let db = TestDatabase::create().await.expect("a test database");
        let pool = connect(&Config::for_tests(db.url(), None, "127.0.0.1:1", "unused"))
            .await
            .unwrap();
        let password = SecretString::from("admin-password-dev");
        let hashed = AtomicUsize::new(0);
        let counting = |password| {
            hashed.fetch_add(1, Ordering::SeqCst);
            async move { password::Hasher::new(1).hash(password, None).await }
        };

        ensure_admin(&pool, ADMIN, &password, counting).await.unwrap();
        assert_eq!(
            hashed.load(Ordering::SeqCst),
            1,
            "the first start creates the administrator"
        );
        ensure_admin(&pool, ADMIN, &password, counting).await.unwrap();
        assert_eq!(
            hashed.load(Ordering::SeqCst),
            1,
            "a restart hashed the password of an administrator already in place"
        );
        let (admins,): (i64,) = sqlx::query_as("SELECT count(*) FROM users WHERE email = $1")
            .bind(ADMIN)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(admins, 1);
    }
}
