//! The user service as gRPC tools see it: health and reflection, so
//! `grpcurl` can list and call it.

use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::helpers::stack;

#[tokio::test(flavor = "multi_thread")]
async fn the_user_service_reports_serving_and_lists_itself_by_reflection() {
    let stack = stack().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", stack.user.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "user.v1.UserService".into(),
        })
        .await
        .unwrap();
    assert_eq!(health.get_ref().status(), ServingStatus::Serving);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("a reflection answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"user.v1.UserService"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

/// The user service is an API of its own: text Postgres would refuse (a NUL)
/// is INVALID_ARGUMENT naming the field, on every text field of every call,
/// and never reaches the database as an error.
#[tokio::test(flavor = "multi_thread")]
async fn a_nul_in_any_text_field_over_grpc_is_invalid_argument() {
    use callchain_proto::user::v1::{
        AuthenticateRequest, CreateUserRequest, ListUsersRequest, UpdateUserRequest,
        user_service_client::UserServiceClient,
    };
    let stack = stack().await;
    let mut client = UserServiceClient::connect(format!("http://{}", stack.user.addr))
        .await
        .unwrap();
    let create = |email: &str, name: &str, password: &str, key: &str| CreateUserRequest {
        email: email.into(),
        name: name.into(),
        password: password.into(),
        idempotency_key: key.into(),
        caller: String::new(),
    };
    let good = ("nul@example.com", "Nul", "correct horse battery", "");
    let cases = [
        ("email", create("nul\0@example.com", good.1, good.2, good.3)),
        ("name", create(good.0, "N\0l", good.2, good.3)),
        ("password", create(good.0, good.1, "correct\0horse", good.3)),
        ("idempotency_key", create(good.0, good.1, good.2, "key\0")),
    ];
    for (field, request) in cases {
        let status = client.create_user(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    for (field, email, password) in [
        ("email", "ada\0@example.com", "correct horse battery"),
        ("password", "ada@example.com", "correct\0horse"),
    ] {
        let request = AuthenticateRequest {
            email: email.into(),
            password: password.into(),
        };
        let status = client.authenticate(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let update = UpdateUserRequest {
        id: uuid::Uuid::now_v7().to_string(),
        name: Some("N\0l".into()),
        ..Default::default()
    };
    let status = client.update_user(update).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let list = ListUsersRequest {
        page_size: 0,
        page_token: "\0".into(),
    };
    let status = client.list_users(list).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(stack.user_count().await, 1, "nothing was written");
    assert!(
        !stack.all_logs().contains("internal error"),
        "no call became an internal error"
    );
}
