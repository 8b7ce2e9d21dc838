//! The API service: REST and JSON-RPC 2.0 over HTTP (axum), calling the user service over gRPC.
//!
//! - [`config`]: settings from the environment.
//! - `users`: the REST handlers, each calling its operation.
//! - `rpc`: JSON-RPC 2.0 on `POST /rpc`, calling the same operations; its
//!   `schema` holds the OpenAPI schemas of JSON-RPC's request, response and
//!   error object.
//! - `operations`: the one implementation of each operation, which both
//!   protocols call; inputs are parsed into domain types here. It reads
//!   neither `users` nor `rpc`.
//! - `wire`: what the operations take and answer as both protocols carry
//!   it (request bodies, query, response bodies), with their schemas.
//! - `auth`: JWT bearer tokens and the roles; the caller's id as baggage.
//! - `roles`: the user service's word on a token's user, kept briefly.
//! - `throttle`: failed logins counted per account and per address, and
//!   registrations per address.
//! - `extract`: extractors that reject as problem+json, the request deadline,
//!   the `Idempotency-Key` header.
//! - `upstream`: the calls to the user service: its replicas, retries
//!   within a budget, and a circuit breaker.
//! - `error`: the one error type, and the one gRPC → HTTP status mapping.
//! - `schema`, `responses`: what the OpenAPI document shares (the domain's
//!   inputs as schemas, the answers several operations give); leaves that
//!   `wire`, REST, JSON-RPC and the document read.
//! - `openapi`: the OpenAPI document's root, generated from the handlers'
//!   annotations; it reads everything above and nothing reads it.
//!
//! [`run`] serves on a listener it is given until the shutdown future
//! resolves, so `main` and the tests start it the same way; [`Config`]
//! tells the shared runner (`callchain_runtime::runner`) how to start it as
//! a process.

mod auth;
pub mod config;
mod error;
mod extract;
mod openapi;
mod operations;
mod responses;
mod roles;
mod rpc;
mod schema;
mod throttle;
mod upstream;
mod users;
mod wire;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::Extensions,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::ListenerExt as _,
};
use callchain_proto::user::v1::user_service_client::UserServiceClient;
use callchain_telemetry::{baggage::BaggagePolicy, http::HttpServerLayer};
use utoipa::OpenApi as _;

pub use auth::Keys;
pub use config::Config;
use error::ApiError;
pub use upstream::{BreakerPolicy, Targets};

/// The user service's client: balanced over its replicas, retried, traced,
/// behind a circuit breaker (see `upstream`).
type UserClient = UserServiceClient<upstream::Upstream>;

/// What every handler shares: the user service's client and replicas, the
/// token keys, what is known of tokens' users, the throttles, and the
/// places of `API_MAX_IN_FLIGHT`.
/// Cloned for every request (by each extractor and middleware that takes
/// it), so it is one `Arc`: a clone or a drop is one atomic count, not one
/// per field, on counts every worker thread touches.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What an [`AppState`] holds.
pub struct Shared {
    users: UserClient,
    replicas: upstream::Replicas,
    keys: Keys,
    roles: roles::Roles,
    throttle: throttle::LoginThrottle,
    registrations: throttle::RegistrationThrottle,
    /// One permit per request served, and per call of a JSON-RPC batch
    /// beyond its first (see [`shed`] and `rpc`).
    in_flight: tokio::sync::Semaphore,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Connects lazily, so the API starts (and answers 503) while the user
    /// service is still down, and recovers by itself when it comes back.
    /// Must be called on a Tokio runtime: it starts the replicas' watcher.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let (users, replicas) = upstream::upstream(config.user_service.clone(), config.breaker);
        Ok(Self(Arc::new(Shared {
            users: UserServiceClient::new(users),
            replicas,
            keys: Keys::new(&config.jwt_secret, config.jwt_ttl),
            roles: roles::Roles::new(config.auth_cache_ttl),
            throttle: throttle::LoginThrottle::new(config.login_limits),
            registrations: throttle::RegistrationThrottle::new(config.registration_limits),
            in_flight: tokio::sync::Semaphore::new(config.max_in_flight),
        })))
    }

    /// How many user service replicas pass their health check now (the
    /// first check runs as soon as the state is made).
    pub fn user_service_replicas_serving(&self) -> usize {
        self.replicas.serving()
    }
}

/// The baggage keys a client may send: a browser's OpenTelemetry SDK tags
/// its session. Anything else a client sends as baggage is dropped at the
/// edge, above all `enduser.id`, which only [`auth::authenticate`] sets.
const CLIENT_BAGGAGE: &[&str] = &["session.id"];

/// The whole HTTP interface.
pub fn router(state: AppState, config: &Config) -> Router {
    let budget = config.request_timeout;
    let api = Router::new()
        .route("/v1/users", post(users::register).get(users::list_users))
        .route(
            "/v1/users/{id}",
            get(users::get_user)
                .patch(users::update_user)
                .delete(users::delete_user),
        )
        .route("/v1/auth/login", post(users::login))
        .route("/rpc", post(rpc::handle))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn(move |request, next| {
            extract::deadline(budget, request, next)
        }))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(HttpServerLayer::new(route_of).with_baggage(BaggagePolicy::untrusted(CLIENT_BAGGAGE)))
        .layer(axum::middleware::from_fn_with_state(state.clone(), shed));
    // Probes stay out of the traces, and out of the limit.
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        .with_state(state)
}

fn route_of(extensions: &Extensions) -> Option<String> {
    extensions.get::<MatchedPath>().map(|path| path.as_str().to_owned())
}

/// Serves the API on `listener` until `shutdown` resolves; in-flight
/// requests drain first.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::new(&config)?;
    let app = router(state, &config);
    tracing::info!(
        addr = %listener.local_addr()?,
        user_service = %config.user_service,
        "api listening"
    );
    // Every answer is written at once: without TCP_NODELAY, Nagle's
    // algorithm holds a write back until the client acknowledges the last,
    // which a client may delay by up to 40 ms.
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(error = %error, "cannot set TCP_NODELAY on a connection");
        }
    });
    // The peer's address reaches the handlers, for the login throttle.
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("api stopped");
    Ok(())
}

/// Past `API_MAX_IN_FLIGHT` a request is refused at once rather than
/// queued: a queue would only turn an overload into timeouts for everyone.
/// The request holds its place until its answer is made.
async fn shed(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.in_flight.try_acquire() {
        Ok(_place) => next.run(request).await,
        Err(_) => {
            callchain_telemetry::metrics::count_shed(1);
            ApiError::busy().into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when at least one user service replica passed its last health
/// check, which is at most an interval old (see `upstream::balance`). (The
/// API holds no other connection: the user service publishes the events.)
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.replicas.serving_checked().await == 0 {
        return Err(ApiError::unavailable("no user service replica is serving"));
    }
    Ok("ready")
}

async fn openapi() -> impl IntoResponse {
    axum::Json(openapi::ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource".into())
}

/// axum adds the `Allow` header naming the methods the path has.
async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this resource does not answer that method".into())
}

/// Probes `/readyz` on `addr`: the container health check.
pub async fn healthcheck(addr: SocketAddr) -> anyhow::Result<()> {
    Ok(callchain_runtime::lifecycle::http_probe(addr, "/readyz").await?)
}

/// What the shared runner (`callchain_runtime::runner`) needs to start
/// the API as a process.
impl callchain_runtime::runner::Service for Config {
    const NAME: &'static str = "api";

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
