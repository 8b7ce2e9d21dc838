//! SIGTERM to the API binary while requests are in flight on keep-alive
//! connections: each request it accepted is answered in full, the spans of
//! those requests reach the collector, and the process exits 0 within
//! `SHUTDOWN_TIMEOUT_SECONDS`.
//!
//! The user service is a stand-in that answers `CreateUser` slowly, so the
//! registrations are still in flight when the signal comes.

use std::time::Duration;

use callchain_domain::{Email, Role, User, UserId, UserName};
use callchain_proto::user::v1::{self as pb, user_service_server::UserService};
use callchain_testkit::{
    otlp::OtlpReceiver,
    process::{ServiceProcess, free_addr},
    spans::SpanKind,
};
use tonic::{Request, Response, Status};

const REQUESTS: usize = 16;
/// How long the stand-in takes to create a user.
const CREATE_DELAY: Duration = Duration::from_millis(800);
const BOUND_SECONDS: u64 = 5;

/// Creates every user it is asked to, slowly; knows nothing else.
struct SlowStandIn;

#[tonic::async_trait]
impl UserService for SlowStandIn {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let request = request.into_inner();
        tokio::time::sleep(CREATE_DELAY).await;
        let now = chrono::Utc::now();
        let user = User {
            id: UserId::new(),
            email: Email::parse(&request.email).map_err(|error| Status::invalid_argument(error.to_string()))?,
            name: UserName::parse(&request.name).map_err(|error| Status::invalid_argument(error.to_string()))?,
            role: Role::User,
            created_at: now,
            updated_at: now,
        };
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(user.into()),
            change: Some(pb::Change {
                event_id: uuid::Uuid::now_v7().to_string(),
                occurred_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            }),
        }))
    }

    async fn get_user(&self, _: Request<pb::GetUserRequest>) -> Result<Response<pb::GetUserResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn update_user(&self, _: Request<pb::UpdateUserRequest>) -> Result<Response<pb::UpdateUserResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn delete_user(&self, _: Request<pb::DeleteUserRequest>) -> Result<Response<pb::DeleteUserResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_users(&self, _: Request<pb::ListUsersRequest>) -> Result<Response<pb::ListUsersResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn authenticate(
        &self,
        _: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_answers_every_accepted_request_flushes_its_spans_and_exits_0_within_the_bound() {
    let otlp = OtlpReceiver::start().await.expect("an OTLP receiver");
    let user_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let user_addr = user_listener.local_addr().unwrap();
    // It reports SERVING, as the API's replica checks ask.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::user_service_server::UserServiceServer<SlowStandIn>>()
        .await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(pb::user_service_server::UserServiceServer::new(SlowStandIn))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(user_listener)),
    );

    let addr = free_addr().unwrap();
    let mut api = ServiceProcess::spawn(
        "api",
        env!("CARGO_BIN_EXE_api"),
        [
            ("API_LISTEN_ADDR", addr.to_string()),
            ("USER_SERVICE_URL", format!("http://{user_addr}")),
            ("JWT_SECRET", "callchain-shutdown-test-secret-0123456789".to_owned()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint()),
            // Nothing is exported on the way unless the exit flushes it.
            ("OTEL_BSP_SCHEDULE_DELAY", "60000".to_owned()),
            ("SHUTDOWN_TIMEOUT_SECONDS", BOUND_SECONDS.to_string()),
        ],
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(REQUESTS)
        .build()
        .unwrap();
    let base = format!("http://{addr}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|answer| answer.status() == 200)
    {
        assert!(api.try_exit().is_none(), "the API exited at start");
        assert!(tokio::time::Instant::now() < deadline, "the API never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Open keep-alive connections first: the drain must close idle ones and
    // finish the busy ones.
    let warm: Vec<_> = (0..REQUESTS)
        .map(|_| tokio::spawn(client.get(format!("{base}/healthz")).send()))
        .collect();
    for answer in warm {
        assert_eq!(answer.await.unwrap().unwrap().status(), 200);
    }

    let registrations: Vec<_> = (0..REQUESTS)
        .map(|n| {
            let request = client.post(format!("{base}/v1/users")).json(&serde_json::json!({
                "email": format!("drain-{n}@example.com"),
                "name": format!("Drain {n}"),
                "password": "correct horse battery staple",
            }));
            tokio::spawn(async move {
                let answer = request.send().await?;
                let status = answer.status();
                let body: serde_json::Value = answer.json().await?;
                Ok::<_, reqwest::Error>((status, body))
            })
        })
        .collect();
    tokio::time::sleep(CREATE_DELAY / 3).await;
    api.stop_within(Duration::from_secs(BOUND_SECONDS)).await.unwrap();

    for (n, registration) in registrations.into_iter().enumerate() {
        let (status, body) = registration
            .await
            .unwrap()
            .unwrap_or_else(|error| panic!("registration {n} was cut off by the shutdown: {error}"));
        assert_eq!(status, 201, "registration {n}: {body}");
        assert_eq!(body["email"], format!("drain-{n}@example.com"), "a whole body");
    }
    let served = otlp
        .spans()
        .into_iter()
        .filter(|span| span.kind == SpanKind::Server && span.name == "POST /v1/users")
        .count();
    assert_eq!(served, REQUESTS, "a server span for every answered request");
    let called = otlp
        .spans()
        .into_iter()
        .filter(|span| span.kind == SpanKind::Client && span.name == "user.v1.UserService/CreateUser")
        .count();
    assert_eq!(called, REQUESTS, "a client span for every call to the user service");
}
