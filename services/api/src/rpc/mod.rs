//! JSON-RPC 2.0 on `POST /rpc`: the operations REST has, as methods whose
//! params are named, with batches and notifications.
//!
//! Each method calls the very operation its REST resource calls (`operations`),
//! with the same caller (the HTTP request's `Authorization` header holds for
//! every call in it), so auth, roles, parsing, the throttle, idempotency
//! keys, the deadline and the events are REST's own. The wire types bear the
//! specification's names: a [`Request`] object is one call, a [`Response`]
//! object answers it with a `result` ([`ResultValue`]) or an `error`
//! ([`ErrorObject`], whose `data` is [`ErrorData`]); their OpenAPI schemas
//! are in `schema`. What is JSON-RPC's:
//!
//! - The body is one request object, or a batch: an array of 1 to
//!   [`MAX_BATCH`] of them, whose calls run concurrently within the HTTP
//!   request (and its one deadline); the responses come back in the batch's
//!   order. Each call counts against `API_MAX_IN_FLIGHT` as an HTTP request
//!   does (past it, that call alone answers `-32053`), and against the
//!   throttles of its method, so a batch does no more than as many HTTP
//!   requests would. A call without an `id` is a notification: it runs, and
//!   gets no response. Only notifications: `204`, no body.
//! - A body that is not JSON (`-32700`), or not a request object or a batch
//!   of 1 to [`MAX_BATCH`] (`-32600`), answers HTTP `400` with a response
//!   holding that error and a null id; an element of a batch that is not a
//!   request object gets a `-32600` response of its own. Everything else
//!   answers `200`, each call's failure in its own response: `-32601` for a
//!   method that does not exist, `-32602` for params that are not an object
//!   of the method's names, or a param that fails validation (with
//!   `data.field`), and for every other failure the code of [`code_of`], one
//!   per status REST answers.

use std::{borrow::Cow, fmt, net::IpAddr};

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response as HttpResponse},
};
use callchain_telemetry::jsonrpc;
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, IgnoredAny, MapAccess, Visitor},
    ser::SerializeStruct as _,
};
use serde_json::value::RawValue;
use tracing::{Instrument as _, Span};

use crate::{
    AppState,
    auth::Caller,
    error::ApiError,
    extract::{ClientAddr, Deadline, IdempotencyKey, JsonBytes},
    operations,
    wire::{ListQuery, LoginRequest, RegisterRequest, TokenBody, UpdateRequest, UserBody, UserPage},
};

pub mod schema;

/// The most calls a batch may hold.
pub const MAX_BATCH: usize = 100;

/// The body is not JSON.
pub const PARSE_ERROR: i32 = -32700;
/// The body, or an element of a batch, is not a request object.
pub const INVALID_REQUEST: i32 = -32600;
/// No method has that name.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// The params are not an object of the method's names, or one fails
/// validation: REST's `400`.
pub const INVALID_PARAMS: i32 = -32602;
/// A failure of the service's own (REST's `500`), and any status without a
/// code of its own.
pub const SERVER_ERROR: i32 = -32000;

/// The code of a failed call: one per status REST answers the same failure
/// with, so one per gRPC status of the user service (`error`'s mapping).
/// The server-error range's last two digits are the 4xx status's (`-32004`
/// is `404`), or 5 and the 5xx status's last digit (`-32053` is `503`).
pub fn code_of(status: StatusCode) -> i32 {
    match status {
        StatusCode::BAD_REQUEST => INVALID_PARAMS,  // INVALID_ARGUMENT
        StatusCode::UNAUTHORIZED => -32001,         // UNAUTHENTICATED
        StatusCode::FORBIDDEN => -32003,            // PERMISSION_DENIED
        StatusCode::NOT_FOUND => -32004,            // NOT_FOUND
        StatusCode::CONFLICT => -32009,             // ALREADY_EXISTS, ABORTED
        StatusCode::UNPROCESSABLE_ENTITY => -32022, // FAILED_PRECONDITION
        StatusCode::TOO_MANY_REQUESTS => -32029,    // a throttled login
        StatusCode::SERVICE_UNAVAILABLE => -32053,  // UNAVAILABLE
        StatusCode::GATEWAY_TIMEOUT => -32054,      // DEADLINE_EXCEEDED
        _ => SERVER_ERROR,                          // INTERNAL, anything else
    }
}

/// The methods, each an operation of `operations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    UserCreate,
    UserGet,
    UserUpdate,
    UserDelete,
    UserList,
    AuthLogin,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::UserCreate,
        Method::UserGet,
        Method::UserUpdate,
        Method::UserDelete,
        Method::UserList,
        Method::AuthLogin,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Method::UserCreate => "user.create",
            Method::UserGet => "user.get",
            Method::UserUpdate => "user.update",
            Method::UserDelete => "user.delete",
            Method::UserList => "user.list",
            Method::AuthLogin => "auth.login",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|method| method.as_str() == name)
    }

    /// Whether the method acts for a caller: all but those open to guests.
    fn needs_caller(self) -> bool {
        !matches!(self, Method::UserCreate | Method::AuthLogin)
    }
}

/// JSON-RPC 2.0 over HTTP: one call or a batch of them.
#[utoipa::path(post, path = "/rpc", tag = "jsonrpc", request_body = schema::RequestOrBatch,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The answer of a call, or an array of the answers of a batch's calls \
            that are not notifications, in the batch's order; a failed call's answer holds its error",
            body = schema::ResponseOrBatch),
        (status = 204, description = "Every call was a notification: nothing to answer"),
        (status = 400, description = "The body is not JSON (`-32700`), or not a request object or a batch of \
            1 to 100 (`-32600`)", body = schema::Response),
        crate::responses::BodyRefused,
        (status = 504, description = "The request ran out of time", body = crate::error::Problem,
            content_type = "application/problem+json"),
    ))]
pub async fn handle(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    deadline: Deadline,
    ClientAddr(address): ClientAddr,
    body: Result<JsonBytes, ApiError>,
) -> Result<HttpResponse, ApiError> {
    jsonrpc::record_request(&Span::current());
    let JsonBytes(body) = body?;
    let calls = Calls {
        state: &state,
        caller: &caller,
        deadline,
        address,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return refused(ErrorObject::protocol(PARSE_ERROR, "the body is not UTF-8 text"));
    };
    if !text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('[') {
        return match Request::parse(text, true) {
            Ok(call) => match calls.answer(call, false).await {
                Some(response) => json(StatusCode::OK, &response),
                None => Ok(StatusCode::NO_CONTENT.into_response()),
            },
            Err(failure) => refused(failure),
        };
    }
    let batch: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(batch) => batch,
        Err(error) => {
            return refused(ErrorObject::protocol(
                PARSE_ERROR,
                format!("the body is not JSON: {error}"),
            ));
        }
    };
    if batch.is_empty() || batch.len() > MAX_BATCH {
        return refused(ErrorObject::protocol(
            INVALID_REQUEST,
            format!("a batch holds 1 to {MAX_BATCH} calls, not {}", batch.len()),
        ));
    }
    // Each call counts against `API_MAX_IN_FLIGHT` as a request would: the
    // request's own place is its first element's, and every other call
    // takes a place of its own for as long as it runs, or is answered 503
    // at once, as a request past the limit is.
    let answers = futures::future::join_all(batch.iter().enumerate().map(|(index, element)| {
        let (calls, state) = (&calls, &state);
        async move {
            let call = match Request::parse(element.get(), false) {
                Ok(call) => call,
                Err(failure) => return Some(Response::failed(None, failure)),
            };
            let place = if index == 0 {
                None
            } else {
                match state.in_flight.try_acquire() {
                    Ok(place) => Some(place),
                    Err(_) => {
                        callchain_telemetry::metrics::count_shed(1);
                        return call
                            .id
                            .map(|id| Response::failed(Some(id), ErrorObject::of(&ApiError::busy())));
                    }
                }
            };
            let response = calls.answer(call, true).await;
            drop(place);
            response
        }
    }))
    .await;
    let responses: Vec<Response<'_>> = answers.into_iter().flatten().collect();
    if responses.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    json(StatusCode::OK, &responses)
}

/// A body refused whole: HTTP `400`, with a response holding the error
/// under a null id.
fn refused(failure: ErrorObject) -> Result<HttpResponse, ApiError> {
    json(StatusCode::BAD_REQUEST, &Response::failed(None, failure))
}

fn json(status: StatusCode, body: &impl Serialize) -> Result<HttpResponse, ApiError> {
    let bytes = serde_json::to_vec(body).map_err(|error| ApiError::Internal(error.into()))?;
    Ok((
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        bytes,
    )
        .into_response())
}

/// A request object (the specification's Request): one call, borrowed
/// from the body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request<'a> {
    #[serde(rename = "jsonrpc")]
    _version: Version,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "given")]
    params: Option<&'a RawValue>,
    /// `None` when absent (a notification); a JSON `null` is an id.
    #[serde(default, borrow, deserialize_with = "given")]
    id: Option<&'a RawValue>,
}

/// A member that is there, whatever its value, `null` included.
fn given<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

impl<'a> Request<'a> {
    /// Reads a request object from `text`; `whole` when `text` is the whole
    /// body, which may then not be JSON at all.
    fn parse(text: &'a str, whole: bool) -> Result<Self, ErrorObject> {
        let call: Request<'a> = serde_json::from_str(text).map_err(|error| {
            let not_json =
                error.is_syntax() || error.is_eof() || (whole && serde_json::from_str::<IgnoredAny>(text).is_err());
            if not_json {
                ErrorObject::protocol(PARSE_ERROR, format!("the body is not JSON: {error}"))
            } else {
                ErrorObject::protocol(INVALID_REQUEST, format!("not a request object: {error}"))
            }
        })?;
        if let Some(id) = call.id
            && !id
                .get()
                .starts_with(['"', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'n'])
        {
            return Err(ErrorObject::protocol(
                INVALID_REQUEST,
                "`id` must be a string, a number or null",
            ));
        }
        if let Some(params) = call.params
            && !params.get().starts_with(['{', '['])
        {
            return Err(ErrorObject::protocol(
                INVALID_REQUEST,
                "`params` must be an object or an array",
            ));
        }
        Ok(call)
    }
}

/// `"2.0"`, the only version.
struct Version;

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let version = Cow::<'de, str>::deserialize(deserializer)?;
        if version == jsonrpc::VERSION {
            Ok(Version)
        } else {
            Err(de::Error::custom(format_args!(
                "`jsonrpc` must be \"{}\"",
                jsonrpc::VERSION
            )))
        }
    }
}

/// What the calls of one HTTP request share.
struct Calls<'r> {
    state: &'r AppState,
    caller: &'r Result<Caller, ApiError>,
    deadline: Deadline,
    address: Option<IpAddr>,
}

impl Calls<'_> {
    /// Runs `call`, in a span of its own when it is one of a batch; its
    /// answer, or `None` for a notification.
    async fn answer<'a>(&self, call: Request<'a>, in_batch: bool) -> Option<Response<'a>> {
        let outcome = match Method::parse(&call.method) {
            None => Err(ErrorObject::protocol(
                METHOD_NOT_FOUND,
                format!("no method is named `{}`", call.method),
            )),
            Some(method) => {
                let span = if in_batch {
                    jsonrpc::call_span(method.as_str())
                } else {
                    let server = Span::current();
                    jsonrpc::record_method(&server, method.as_str());
                    server
                };
                let outcome = self.run(method, call.params).instrument(span.clone()).await;
                if let Err(failure) = &outcome {
                    jsonrpc::record_error(&span, failure.code.into(), failure.is_server_error());
                }
                outcome
            }
        };
        call.id.map(|id| Response { id: Some(id), outcome })
    }

    async fn run(&self, method: Method, params: Option<&RawValue>) -> Result<ResultValue, ErrorObject> {
        let caller = if method.needs_caller() {
            *self.caller.as_ref().map_err(ErrorObject::of)?
        } else {
            Caller::Guest
        };
        self.call(method, caller, params)
            .await
            .map_err(|error| ErrorObject::of(&error))
    }

    /// The operation `method` names, given its params as REST's handlers
    /// give it a request's parts: each as it arrived, or why it was refused.
    async fn call(&self, method: Method, caller: Caller, params: Option<&RawValue>) -> Result<ResultValue, ApiError> {
        let (state, deadline) = (self.state, &self.deadline);
        let mut params = Params::of(params)?;
        match method {
            Method::UserCreate => {
                let key = params.idempotency_key();
                let body = params.last(|params| {
                    Ok(RegisterRequest {
                        email: params.required_text("email")?,
                        name: params.required_text("name")?,
                        password: params.required_text("password")?,
                    })
                });
                operations::create(state, self.address, deadline, key, body)
                    .await
                    .map(ResultValue::User)
            }
            Method::AuthLogin => {
                let body = params.last(|params| {
                    Ok(LoginRequest {
                        email: params.required_text("email")?,
                        password: params.required_text("password")?,
                    })
                });
                operations::log_in(state, self.address, deadline, body)
                    .await
                    .map(ResultValue::Token)
            }
            Method::UserGet => {
                let id = params.last(|params| params.required_text("id"));
                operations::read(state, caller, deadline, id)
                    .await
                    .map(ResultValue::User)
            }
            Method::UserUpdate => {
                let id = params.required_text("id");
                let key = params.idempotency_key();
                let body = params.last(|params| {
                    Ok(UpdateRequest {
                        email: params.text("email")?,
                        name: params.text("name")?,
                        password: params.text("password")?,
                        role: params.text("role")?,
                    })
                });
                operations::update(state, caller, deadline, id, key, body)
                    .await
                    .map(ResultValue::User)
            }
            Method::UserDelete => {
                let key = params.idempotency_key();
                let id = params.last(|params| params.required_text("id"));
                operations::delete(state, caller, deadline, id, key)
                    .await
                    .map(|()| ResultValue::Done)
            }
            Method::UserList => {
                let query = params.last(|params| {
                    Ok(ListQuery {
                        page_size: params.take("page_size", "a whole number")?,
                        page_token: params.text("page_token")?,
                    })
                });
                operations::list(state, caller, deadline, query)
                    .await
                    .map(ResultValue::Page)
            }
        }
    }
}

/// The params of one call, by name, taken one by one; those left over at
/// the end are refused.
struct Params<'a> {
    given: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Params<'a> {
    /// `params` as given: absent is no params; an array (params by
    /// position) is refused.
    fn of(params: Option<&'a RawValue>) -> Result<Self, ApiError> {
        let Some(params) = params else {
            return Ok(Self { given: Vec::new() });
        };
        if params.get().starts_with('[') {
            return Err(ApiError::bad_request(
                "params must be an object: the methods take their params by name",
            ));
        }
        let Named(given) =
            serde_json::from_str(params.get()).map_err(|error| ApiError::bad_request(format!("params: {error}")))?;
        Ok(Self { given })
    }

    /// The param `name`, if given, read as `T` (`expected` says what that
    /// is); `null` is refused like any other value of the wrong type.
    fn take<T: Deserialize<'a>>(&mut self, name: &'static str, expected: &str) -> Result<Option<T>, ApiError> {
        let Some(at) = self.given.iter().position(|(given, _)| given == name) else {
            return Ok(None);
        };
        let (_, value) = self.given.remove(at);
        serde_json::from_str(value.get())
            .map(Some)
            .map_err(|_| ApiError::BadRequest {
                field: Some(name.to_owned()),
                detail: format!("{name}: must be {expected}"),
            })
    }

    fn text(&mut self, name: &'static str) -> Result<Option<String>, ApiError> {
        self.take(name, "a string")
    }

    fn required_text(&mut self, name: &'static str) -> Result<String, ApiError> {
        self.text(name)?.ok_or_else(|| ApiError::BadRequest {
            field: Some(name.to_owned()),
            detail: format!("{name}: is required"),
        })
    }

    /// The optional `idempotency_key`, as the `Idempotency-Key` header is.
    fn idempotency_key(&mut self) -> Result<IdempotencyKey, ApiError> {
        const NAME: &str = "idempotency_key";
        match self.text(NAME)? {
            Some(key) => IdempotencyKey::parse(&key, NAME),
            None => Ok(IdempotencyKey::default()),
        }
    }

    /// What `read` takes, and then nothing else: a param left over is
    /// refused, as REST refuses a field its schema does not have.
    fn last<T>(mut self, read: impl FnOnce(&mut Self) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let value = read(&mut self)?;
        match self.given.first() {
            None => Ok(value),
            Some((name, _)) => Err(ApiError::BadRequest {
                field: Some(name.to_string()),
                detail: format!("{name}: the method has no such param"),
            }),
        }
    }
}

/// The members of a params object, in order, borrowed.
struct Named<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Named<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;

        impl<'de> Visitor<'de> for Members {
            type Value = Named<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("an object")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut given: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
                while let Some((Name(name), value)) = map.next_entry()? {
                    if given.iter().any(|(other, _)| *other == name) {
                        return Err(de::Error::custom(format_args!("`{name}` is given twice")));
                    }
                    given.push((name, value));
                }
                Ok(Named(given))
            }
        }

        deserializer.deserialize_map(Members)
    }
}

/// A member's name, borrowed unless it holds an escape.
#[derive(Deserialize)]
struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

/// The `result` member of a successful response: the body REST answers.
#[derive(Serialize)]
#[serde(untagged)]
enum ResultValue {
    User(UserBody),
    Token(TokenBody),
    Page(UserPage),
    /// `null`: done, nothing to show (REST's `204`).
    Done,
}

/// The `error` member of a failed response (the specification's Error
/// object).
#[derive(Debug, Serialize)]
struct ErrorObject {
    code: i32,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<ErrorData>,
}

/// An error object's `data`: what a failed call's error says beside its
/// code, as REST's problem document says it.
#[derive(Debug, Serialize)]
struct ErrorData {
    /// The HTTP status REST answers the same failure with.
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
}

impl ErrorObject {
    /// A failure of the protocol itself, before any method ran.
    fn protocol(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// A failed call, as REST would answer it.
    fn of(error: &ApiError) -> Self {
        let status = error.status();
        Self {
            code: code_of(status),
            message: error.logged_detail(),
            data: Some(ErrorData {
                status: status.as_u16(),
                field: error.field().map(str::to_owned),
                retry_after: error.retry_after_secs(),
                trace_id: callchain_telemetry::propagation::trace_id(&Span::current()),
            }),
        }
    }

    /// Whether the service, not the caller, is at fault.
    fn is_server_error(&self) -> bool {
        self.data.as_ref().is_some_and(|data| data.status >= 500)
    }
}

/// A response object (the specification's Response): the answer to one
/// call, its id (`None` is `null`) and either its `result` or its `error`.
struct Response<'a> {
    id: Option<&'a RawValue>,
    outcome: Result<ResultValue, ErrorObject>,
}

impl Response<'_> {
    fn failed(id: Option<&RawValue>, failure: ErrorObject) -> Response<'_> {
        Response {
            id,
            outcome: Err(failure),
        }
    }
}

impl Serialize for Response<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut response = serializer.serialize_struct("Response", 3)?;
        response.serialize_field("jsonrpc", jsonrpc::VERSION)?;
        match &self.outcome {
            Ok(result) => response.serialize_field("result", result)?,
            Err(error) => response.serialize_field("error", error)?,
        }
        response.serialize_field("id", &self.id)?;
        response.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_found_by_its_name() {
        for method in Method::ALL {
            assert_eq!(Method::parse(method.as_str()), Some(method));
        }
        assert_eq!(Method::parse("user.nothing"), None);
    }

    #[test]
    fn each_status_rest_answers_has_a_code_of_its_own() {
        let statuses = [400, 401, 403, 404, 409, 422, 429, 500, 503, 504];
        let codes: std::collections::HashSet<i32> = statuses
            .iter()
            .map(|status| code_of(StatusCode::from_u16(*status).unwrap()))
            .collect();
        assert_eq!(codes.len(), statuses.len());
        for code in codes.iter().filter(|code| **code != INVALID_PARAMS) {
            assert!((-32099..=-32000).contains(code), "{code}");
        }
    }

    #[test]
    fn a_request_object_is_read_strictly() {
        let call = Request::parse(
            r#"{"jsonrpc":"2.0","method":"user.get","params":{"id":"x"},"id":null}"#,
            true,
        )
        .ok()
        .unwrap();
        assert_eq!(call.id.map(RawValue::get), Some("null"));
        let notification = Request::parse(r#"{"jsonrpc":"2.0","method":"user.get"}"#, true)
            .ok()
            .unwrap();
        assert!(notification.id.is_none() && notification.params.is_none());
        for (text, code) in [
            (r#"{"jsonrpc":"2.0","method":"m""#, PARSE_ERROR),
            (r#"{"jsonrpc":"2.0","method":1} x"#, PARSE_ERROR),
            (r#"{"jsonrpc":"1.0","method":"m"}"#, INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","method":"m","extra":1}"#, INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","method":"m","id":true}"#, INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","method":"m","params":"x"}"#, INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","method":"m","params":null}"#, INVALID_REQUEST),
            ("1", INVALID_REQUEST),
        ] {
            assert_eq!(
                Request::parse(text, true).err().map(|failure| failure.code),
                Some(code),
                "{text}"
            );
        }
    }

    #[test]
    fn params_name_the_field_they_refuse() {
        let raw = |text: &'static str| serde_json::from_str::<&RawValue>(text).unwrap();
        let field = |result: Result<String, ApiError>| result.err().and_then(|error| error.field().map(str::to_owned));

        let params = Params::of(Some(raw(r#"{"id":"a","other":1}"#))).unwrap();
        assert_eq!(
            field(params.last(|params| params.required_text("id"))).as_deref(),
            Some("other")
        );
        let mut params = Params::of(Some(raw(r#"{"id":null}"#))).unwrap();
        assert_eq!(field(params.required_text("id")).as_deref(), Some("id"));
        let mut params = Params::of(None).unwrap();
        assert_eq!(field(params.required_text("id")).as_deref(), Some("id"));
        assert!(Params::of(Some(raw(r#"["a"]"#))).is_err());
        assert!(Params::of(Some(raw(r#"{"id":"a","id":"b"}"#))).is_err());
        let params = Params::of(Some(raw(r#"{"i\u0064":"a"}"#))).unwrap();
        assert_eq!(params.last(|params| params.required_text("id")).unwrap(), "a");
    }
}
