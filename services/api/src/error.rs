//! The API's one error type, answered as `application/problem+json`
//! (RFC 9457), and the one mapping of gRPC status codes to HTTP.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use callchain_domain::Invalid;
use serde::Serialize;
use tonic::Code;
use tonic_types::StatusExt as _;

/// Seconds a client should wait before retrying after a `503`.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest { field: Option<String>, detail: String },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after_secs: u64 },
    /// `503`; `retry_after_secs` is answered as `Retry-After`.
    #[error("{detail}")]
    Unavailable { detail: String, retry_after_secs: u64 },
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A `503` whose client may retry after [`RETRY_AFTER_SECS`].
    pub fn unavailable(detail: impl Into<String>) -> Self {
        ApiError::Unavailable {
            detail: detail.into(),
            retry_after_secs: RETRY_AFTER_SECS,
        }
    }

    /// A `503` for a request (or a call of a JSON-RPC batch) past
    /// `API_MAX_IN_FLIGHT`.
    pub fn busy() -> Self {
        Self::unavailable("the API is serving as many requests as it can; retry shortly")
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: None,
            detail: detail.into(),
        }
    }

    /// A body larger than `MAX_BODY_BYTES`.
    pub fn body_too_large() -> Self {
        ApiError::PayloadTooLarge("the request body is too large".into())
    }

    /// A body whose content type is not JSON.
    pub fn body_not_json() -> Self {
        ApiError::UnsupportedMediaType("the request body must be JSON (Content-Type: application/json)".into())
    }

    /// What the client is told, in every protocol: the error's own words,
    /// or for an internal error nothing internal.
    pub fn public_detail(&self) -> String {
        match self {
            ApiError::Internal(_) => "an internal error occurred; quote the trace_id when reporting it".to_owned(),
            other => other.to_string(),
        }
    }

    /// The detail of an error being answered, in whichever protocol: the
    /// one place an internal error's cause is logged, inside the request's
    /// span, once per answer (REST's problem document, or a JSON-RPC
    /// call's error).
    pub fn logged_detail(&self) -> String {
        if let ApiError::Internal(cause) = self {
            tracing::error!(error = &**cause as &dyn std::error::Error, "internal error");
        }
        self.public_detail()
    }

    /// The input field at fault, when one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// Seconds the client should wait before retrying, when it should.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::TooManyRequests { retry_after_secs, .. } => Some(*retry_after_secs),
            ApiError::Unavailable { retry_after_secs, .. } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::BadRequest {
            field: Some(invalid.field.to_owned()),
            detail: invalid.to_string(),
        }
    }
}

/// The mapping of ARCHITECTURE.md ("Errors, one mapping"): gRPC status → HTTP status.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => {
                // The user service names the field at fault in a BadRequest detail.
                let field = status
                    .get_details_bad_request()
                    .and_then(|bad_request| bad_request.field_violations.into_iter().next())
                    .map(|violation| violation.field);
                ApiError::BadRequest { field, detail: message }
            }
            Code::Unauthenticated => ApiError::Unauthenticated(message),
            Code::PermissionDenied => ApiError::Forbidden(message),
            Code::NotFound => ApiError::NotFound(message),
            Code::AlreadyExists | Code::Aborted => ApiError::Conflict(message),
            Code::FailedPrecondition => ApiError::Unprocessable(message),
            Code::DeadlineExceeded | Code::Cancelled => {
                ApiError::DeadlineExceeded("the request ran out of time waiting for the user service".into())
            }
            // An open circuit breaker says how long it stays open.
            Code::Unavailable => ApiError::Unavailable {
                detail: "the user service is unavailable; retry shortly".into(),
                retry_after_secs: status
                    .metadata()
                    .get(crate::upstream::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok()?.parse().ok())
                    .unwrap_or(RETRY_AFTER_SECS),
            },
            _ => ApiError::Internal(anyhow::Error::new(status)),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::body_too_large(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::body_not_json(),
            _ => match rejection {
                JsonRejection::JsonSyntaxError(error) => ApiError::bad_request(format!(
                    "the request body is not valid JSON: {}",
                    error.body_text_source()
                )),
                JsonRejection::JsonDataError(error) => ApiError::bad_request(format!(
                    "the request body does not match the schema: {}",
                    error.body_text_source()
                )),
                other => ApiError::bad_request(other.body_text()),
            },
        }
    }
}

trait SourceText {
    fn body_text_source(&self) -> String;
}

impl<E: std::error::Error> SourceText for E {
    /// serde's own words (`missing field `password` at line 1 column 30`),
    /// without axum's prefix.
    fn body_text_source(&self) -> String {
        let mut error: &dyn std::error::Error = self;
        while let Some(source) = error.source() {
            error = source;
        }
        error.to_string()
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The input field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The trace of this request, to find it in Jaeger or the logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let trace_id = callchain_telemetry::propagation::trace_id(&tracing::Span::current());
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.logged_detail(),
            field: self.field().map(str::to_owned),
            trace_id,
        };
        let mut response = (status, Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_the_http_statuses_of_the_design() {
        let cases = [
            (Code::InvalidArgument, StatusCode::BAD_REQUEST),
            (Code::Unauthenticated, StatusCode::UNAUTHORIZED),
            (Code::PermissionDenied, StatusCode::FORBIDDEN),
            (Code::NotFound, StatusCode::NOT_FOUND),
            (Code::AlreadyExists, StatusCode::CONFLICT),
            (Code::Aborted, StatusCode::CONFLICT),
            (Code::FailedPrecondition, StatusCode::UNPROCESSABLE_ENTITY),
            (Code::DeadlineExceeded, StatusCode::GATEWAY_TIMEOUT),
            (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
            (Code::Internal, StatusCode::INTERNAL_SERVER_ERROR),
            (Code::Unknown, StatusCode::INTERNAL_SERVER_ERROR),
            (Code::DataLoss, StatusCode::INTERNAL_SERVER_ERROR),
        ];
        for (code, http) in cases {
            assert_eq!(ApiError::from(tonic::Status::new(code, "x")).status(), http, "{code:?}");
        }
    }

    #[test]
    fn unavailable_answers_with_retry_after_and_problem_json() {
        let response = ApiError::from(tonic::Status::unavailable("down")).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    }

    #[test]
    fn an_open_breaker_answers_retry_after_its_remaining_cool_down() {
        let mut status = tonic::Status::unavailable("the user service's circuit breaker is open");
        status.metadata_mut().insert(crate::upstream::RETRY_AFTER, 4.into());
        let response = ApiError::from(status).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "4");
    }

    #[test]
    fn invalid_argument_keeps_the_field_its_bad_request_detail_names() {
        let status = tonic::Status::with_error_details(
            Code::InvalidArgument,
            "page_token: is not a token this service gave",
            tonic_types::ErrorDetails::with_bad_request_violation("page_token", "is not a token this service gave"),
        );
        match ApiError::from(status) {
            ApiError::BadRequest { field, detail } => {
                assert_eq!(field.as_deref(), Some("page_token"));
                assert_eq!(detail, "page_token: is not a token this service gave");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_field_named_only_in_the_message_is_not_guessed() {
        match ApiError::from(tonic::Status::invalid_argument("email: must not be empty")) {
            ApiError::BadRequest { field, .. } => assert_eq!(field, None),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Counts the events logged while it is the default subscriber.
    struct Logged(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logged {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn an_internal_error_is_logged_once_where_it_is_answered_and_never_when_its_detail_is_read() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let logged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(Logged(logged.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let error = ApiError::Internal(anyhow::anyhow!("the disk is full"));
            for _ in 0..2 {
                assert!(!error.public_detail().contains("disk"));
            }
            assert_eq!(
                logged.load(std::sync::atomic::Ordering::SeqCst),
                0,
                "reading the detail logged"
            );
            let response = error.into_response();
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(
                logged.load(std::sync::atomic::Ordering::SeqCst),
                1,
                "answering logs once"
            );
        });
    }
}
