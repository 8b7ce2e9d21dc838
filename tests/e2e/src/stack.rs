//! The services wired together on real parts, for one test: a fresh
//! database, topics of its own on the run's Kafka, the OTLP receiver, and the
//! user service, the API and the consumer, each in process on port 0.

use std::{net::SocketAddr, time::Duration};

use serde_json::{Value, json};

use callchain_telemetry::Export;

use callchain_testkit::{
    kafka::Kafka,
    otlp::OtlpReceiver,
    postgres::TestDatabase,
    process::free_addr,
    service::{ServiceHandle, Telemetry, wait_until},
};

/// The variable that names the run's collector's OTLP gRPC endpoint.
pub const COLLECTOR_VAR: &str = "CALLCHAIN_TEST_OTLP";
/// The variable that names the run's Jaeger query API.
pub const JAEGER_VAR: &str = "CALLCHAIN_TEST_JAEGER";

/// The administrator every test stack starts with.
pub const ADMIN_EMAIL: &str = "admin@callchain.test";
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
/// The token signing key of test stacks.
pub const JWT_SECRET: &str = "callchain-test-secret-0123456789abcdef";

pub struct Stack {
    pub db: TestDatabase,
    pub otlp: OtlpReceiver,
    /// Where the services send their spans and metrics.
    pub export: Telemetry,
    pub kafka: Kafka,
    pub user: ServiceHandle,
    /// The user service's other replicas, when the stack has more than one.
    pub replicas: Vec<ServiceHandle>,
    pub api: ServiceHandle,
    pub consumer: ServiceHandle,
    pub http: reqwest::Client,
}

/// The consumer's settings for a test database and the test's topics.
pub fn consumer_config(db: &TestDatabase, kafka: &Kafka) -> callchain_consumer::Config {
    callchain_consumer::Config::for_tests(db.url(), kafka.bootstrap(), &kafka.topic, &kafka.group)
}

/// Starts the consumer on `db` and the test's topics, and waits until it is
/// healthy (its migrations have run).
pub async fn spawn_consumer(
    db: &TestDatabase,
    kafka: &Kafka,
    export: impl Into<Telemetry>,
) -> anyhow::Result<ServiceHandle> {
    let config = consumer_config(db, kafka);
    let mut consumer = ServiceHandle::spawn("consumer", export, move |listener, shutdown| {
        callchain_consumer::run(config, listener, async move {
            let _ = shutdown.await;
        })
    })?;
    let addr = consumer.addr;
    wait_until(&mut consumer, || callchain_consumer::healthcheck(addr)).await?;
    Ok(consumer)
}

/// The user service's settings for a test database and the test's topic,
/// with the test administrator.
pub fn user_config(db: &TestDatabase, kafka: &Kafka) -> callchain_user::Config {
    callchain_user::Config::for_tests(
        db.url(),
        Some((ADMIN_EMAIL.to_owned(), ADMIN_PASSWORD.to_owned())),
        kafka.bootstrap(),
        &kafka.topic,
    )
}

/// A change to the API's test settings.
pub type ApiSettings = Box<dyn FnOnce(&mut callchain_api::Config) + Send>;

/// A change to the user service's test settings (each replica's).
pub type UserSettings = std::sync::Arc<dyn Fn(&mut callchain_user::Config) + Send + Sync>;

/// How a test's stack differs from the usual one.
#[derive(Default)]
pub struct Options {
    /// User service replicas beside the first, all named to the API.
    pub more_replicas: usize,
    /// Changes to the API's test settings.
    pub api: Option<ApiSettings>,
    /// Changes to the user service's test settings (its faults, say).
    pub user: Option<UserSettings>,
}

/// Starts the user service (and its outbox relay) on `db` and the test's
/// topic, listening on `addr` (port 0 for any), and waits until it serves.
pub async fn spawn_user(
    db: &TestDatabase,
    kafka: &Kafka,
    addr: SocketAddr,
    export: impl Into<Telemetry>,
) -> anyhow::Result<ServiceHandle> {
    spawn_user_with(db, kafka, addr, export, None).await
}

/// [`spawn_user`], its settings changed by `settings` first.
pub async fn spawn_user_with(
    db: &TestDatabase,
    kafka: &Kafka,
    addr: SocketAddr,
    export: impl Into<Telemetry>,
    settings: Option<&UserSettings>,
) -> anyhow::Result<ServiceHandle> {
    let mut config = user_config(db, kafka);
    if let Some(configure) = settings {
        configure(&mut config);
    }
    let mut user = ServiceHandle::spawn_at(addr, "user", export, move |listener, shutdown| {
        callchain_user::run(config, listener, async move {
            let _ = shutdown.await;
        })
    })?;
    let addr = user.addr;
    wait_until(&mut user, || callchain_user::healthcheck(addr)).await?;
    Ok(user)
}

impl Stack {
    /// Starts everything on the run's shared broker and waits until the API
    /// is ready.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(Kafka::shared().await?).await
    }

    /// The same, on the broker and topics given.
    pub async fn start_on(kafka: Kafka) -> anyhow::Result<Self> {
        Self::launch(kafka, None, Options::default()).await
    }

    /// Starts everything on the run's shared broker, as `options` say.
    pub async fn start_with(options: Options) -> anyhow::Result<Self> {
        Self::launch(Kafka::shared().await?, None, options).await
    }

    /// Starts everything on the run's shared broker with the services
    /// recording every span but exporting none ([`Export::Discard`]): what
    /// `make bench` measures the price of export against. `otlp` then
    /// receives nothing.
    pub async fn start_recording_only() -> anyhow::Result<Self> {
        Self::start_exporting(Export::Discard).await
    }

    /// Starts everything on the run's shared broker with the services'
    /// spans (and metrics) exported as `export` says (a benchmark's span
    /// counter, say). `otlp` then receives nothing.
    pub async fn start_exporting(export: impl Into<Telemetry>) -> anyhow::Result<Self> {
        Self::launch(Kafka::shared().await?, Some(export.into()), Options::default()).await
    }

    /// The same, on the broker and topics given, as `options` say.
    pub async fn start_exporting_on(
        kafka: Kafka,
        export: impl Into<Telemetry>,
        options: Options,
    ) -> anyhow::Result<Self> {
        Self::launch(kafka, Some(export.into()), options).await
    }

    /// Starts everything on the run's shared broker, with the services
    /// exporting their spans to the run's OpenTelemetry Collector (named in
    /// `CALLCHAIN_TEST_OTLP`), which forwards them to the run's Jaeger: the
    /// path of `make dev` and `make up`. `otlp` then receives nothing.
    pub async fn start_through_collector() -> anyhow::Result<Self> {
        let collector = std::env::var(COLLECTOR_VAR).map_err(|_| {
            anyhow::anyhow!(
                "no OpenTelemetry Collector for the tests ({COLLECTOR_VAR} is unset): run the tests with \
                 `make test`, which builds and starts the collector and Jaeger, or start them with \
                 `scripts/test-parts.sh up` and export what it prints"
            )
        })?;
        Self::launch(
            Kafka::shared().await?,
            Some(Export::Otlp(collector).into()),
            Options::default(),
        )
        .await
    }

    /// Starts the stack with its spans exported as `export` says (to `otlp`
    /// when it says nothing), as `options` say.
    async fn launch(kafka: Kafka, export: Option<Telemetry>, options: Options) -> anyhow::Result<Self> {
        let db = TestDatabase::create().await?;
        let otlp = OtlpReceiver::start().await?;
        let endpoint = export.unwrap_or_else(|| Export::Otlp(otlp.endpoint()).into());
        // A user service may be stopped and started again on its address,
        // which the API keeps dialling meanwhile: an address off the
        // ephemeral range stays free for it (see `free_addr`).
        let settings = options.user.as_ref();
        let user = spawn_user_with(&db, &kafka, free_addr()?, endpoint.clone(), settings).await?;
        let mut replicas = Vec::new();
        for _ in 0..options.more_replicas {
            replicas.push(spawn_user_with(&db, &kafka, free_addr()?, endpoint.clone(), settings).await?);
        }

        let urls = std::iter::once(&user)
            .chain(&replicas)
            .map(|replica| format!("http://{}", replica.addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut api_config = callchain_api::Config::for_tests(urls, JWT_SECRET.to_owned());
        if let Some(configure) = options.api {
            configure(&mut api_config);
        }
        let mut api = ServiceHandle::spawn("api", endpoint.clone(), move |listener, shutdown| {
            callchain_api::run(api_config, listener, async move {
                let _ = shutdown.await;
            })
        })?;
        let consumer = spawn_consumer(&db, &kafka, endpoint.clone()).await?;

        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        let ready = format!("http://{}/readyz", api.addr);
        let probe = http.clone();
        wait_until(&mut api, || {
            let (probe, ready) = (probe.clone(), ready.clone());
            async move {
                let response = probe.get(ready).send().await?;
                anyhow::ensure!(response.status().is_success(), "not ready: {}", response.status());
                Ok(())
            }
        })
        .await?;

        Ok(Self {
            db,
            otlp,
            export: endpoint,
            kafka,
            user,
            replicas,
            api,
            consumer,
            http,
        })
    }

    /// The URL of `path` on the API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api.addr)
    }

    /// Exports every finished span of every service.
    pub async fn flush(&self) {
        self.user.flush().await;
        for replica in &self.replicas {
            replica.flush().await;
        }
        self.api.flush().await;
        self.consumer.flush().await;
    }

    /// Registers a user through the API; panics unless it answers 201.
    pub async fn register(&self, email: &str, password: &str) -> Value {
        let response = self
            .http
            .post(self.url("/v1/users"))
            .json(&json!({ "email": email, "name": "Test User", "password": password }))
            .send()
            .await
            .expect("POST /v1/users");
        assert_eq!(
            response.status(),
            201,
            "registering {email}: {}",
            response.text().await.unwrap_or_default()
        );
        response.json().await.expect("a user body")
    }

    /// `PATCH /v1/users/{id}` with `body`, as the bearer of `token`.
    pub async fn patch_user(&self, id: impl std::fmt::Display, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .patch(self.url(&format!("/v1/users/{id}")))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("PATCH /v1/users/{id}")
    }

    /// `GET /v1/users/{id}`, as the bearer of `token`.
    pub async fn get_user(&self, id: impl std::fmt::Display, token: &str) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/v1/users/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /v1/users/{id}")
    }

    /// `DELETE /v1/users/{id}`, as the bearer of `token`.
    pub async fn delete_user(&self, id: impl std::fmt::Display, token: &str) -> reqwest::Response {
        self.http
            .delete(self.url(&format!("/v1/users/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("DELETE /v1/users/{id}")
    }

    /// Logs in through the API and returns the bearer token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let response = self
            .http
            .post(self.url("/v1/auth/login"))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("POST /v1/auth/login");
        assert_eq!(
            response.status(),
            200,
            "logging in {email}: {}",
            response.text().await.unwrap_or_default()
        );
        let body: Value = response.json().await.expect("a token body");
        body["access_token"].as_str().expect("access_token").to_owned()
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Every JSON log line of every service, as text (for greps).
    pub fn all_logs(&self) -> String {
        [&self.user, &self.api, &self.consumer]
            .into_iter()
            .chain(&self.replicas)
            .map(|service| service.logs.text())
            .collect()
    }

    /// How many events wait in the user service's outbox.
    pub async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(self.db.pool())
            .await
            .expect("counting the outbox")
    }

    /// Waits (up to `patience`) until the relay has published every event
    /// of the outbox.
    pub async fn wait_until_published(&self, patience: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let waiting = self.outbox_len().await;
            if waiting == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{waiting} events still in the outbox after {patience:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The event rows of `user_id` as `(event_type, trace_id)`, oldest
    /// first, once the relay has published the whole outbox and the consumer
    /// has caught up with everything written to the topic so far (so a
    /// duplicate would be there too).
    pub async fn events_of(&self, user_id: &str) -> Vec<(String, Option<String>)> {
        self.wait_until_published(Duration::from_secs(90))
            .await
            .expect("the relay publishes the outbox");
        self.kafka
            .wait_until_consumed(Duration::from_secs(90))
            .await
            .expect("the consumer catches up");
        let user_id: uuid::Uuid = user_id.parse().expect("a user id");
        sqlx::query_as(
            "SELECT event_type, trace_id FROM user_events WHERE user_id = $1 ORDER BY occurred_at, written_at",
        )
        .bind(user_id)
        .fetch_all(self.db.pool())
        .await
        .expect("reading user_events")
    }

    /// How many users the database holds.
    pub async fn user_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(self.db.pool())
            .await
            .expect("counting users")
    }
}
