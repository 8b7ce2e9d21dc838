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
