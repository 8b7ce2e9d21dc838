//! The OpenAPI document served at `/openapi.json`, generated from the
//! handlers' annotations so it cannot drift from the code.
//!
//! - [`schema`]: the schema of every input the domain parses, built from the
//!   domain's own limits and patterns (`callchain-domain`), so the document
//!   states exactly what the code enforces.
//! - What every answer shares is added here, once, as the layers that cause
//!   it do: the `traceparent` header of every response (the HTTP server
//!   layer), `Retry-After` on 429 and 503 and `WWW-Authenticate` on 401 (the
//!   error type), and the links between operations that a client (or a
//!   stateful fuzzer) follows from one answer to the next request.

use utoipa::{
    Modify, OpenApi,
    openapi::{
        Header, Object, ObjectBuilder, PathItem, RefOr, Required, Type,
        extensions::Extensions,
        link::LinkBuilder,
        path::{Operation, ParameterIn},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{error::Problem, rpc, users};

#[derive(OpenApi)]
#[openapi(
    info(title = "callchain API", description = "Users over HTTP, traced end to end."),
    paths(users::register, users::login, users::get_user, users::update_user, users::delete_user, users::list_users,
        rpc::handle),
    components(schemas(
        users::RegisterRequest, users::LoginRequest, users::UpdateRequest, users::UserBody, users::TokenBody,
        users::UserPage, Problem, jsonrpc::RpcBody, jsonrpc::RpcRequest, jsonrpc::RpcAnswer, jsonrpc::RpcResponse
    )),
    modifiers(&BearerAuth, &ParameterFacts, &SharedHeaders, &Links)
)]
pub struct ApiDoc;

/// The schemas of the domain's inputs, from its constants.
pub mod schema {
    use callchain_domain::{Email, IdempotencyKey, PageSize, Password, Role, UserId, UserName};
    use utoipa::openapi::{KnownFormat, Object, ObjectBuilder, SchemaFormat, Type};

    fn text(min: usize, max: usize, pattern: &str) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(min))
            .max_length(Some(max))
            .pattern(Some(pattern))
    }

    /// `Email::parse`: at most 254 characters, one `@`, a dotted domain, no
    /// white space or control character.
    pub fn email() -> Object {
        text(1, Email::MAX_CHARS, Email::PATTERN)
            .description(Some(
                "An email address: one `@` between a local part and a domain of dot-separated labels, \
                 no white space or control character. Unique whatever its case.",
            ))
            .examples(["ada@example.com"])
            .build()
    }

    /// `UserName::parse`.
    pub fn name() -> Object {
        text(1, UserName::MAX_CHARS, UserName::PATTERN)
            .description(Some(
                "A display name: no control character, no white space at either end.",
            ))
            .examples(["Ada Lovelace"])
            .build()
    }

    /// `Password::parse`.
    pub fn password() -> Object {
        text(Password::MIN_CHARS, Password::MAX_CHARS, Password::PATTERN)
            .description(Some(
                "A password: no control character. Never shown back, never logged.",
            ))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Password)))
            .write_only(true)
            .examples(["correct horse battery staple"])
            .build()
    }

    /// `Role::parse`.
    pub fn role() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Role::ALL.map(Role::as_str)))
            .build()
    }

    /// `UserId::parse`: a UUID with hyphens.
    pub fn user_id() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
            .pattern(Some(UserId::PATTERN))
            .build()
    }

    /// `PageSize::parse`.
    pub fn page_size() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(PageSize::MIN))
            .maximum(Some(PageSize::MAX))
            .default(Some(PageSize::DEFAULT.get().into()))
            .build()
    }

    /// `IdempotencyKey::parse`.
    pub fn idempotency_key() -> Object {
        text(1, IdempotencyKey::MAX_CHARS, IdempotencyKey::PATTERN)
            .examples(["0199a5c2-7b1e-7c3d-9f00-5e4d3c2b1a09"])
            .build()
    }

    /// The one token type.
    pub fn bearer() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["Bearer"]))
            .build()
    }
}

/// The schemas of `POST /rpc`. They state what the endpoint refuses whole
/// (HTTP `400`): a body that is not a request object or a batch of 1 to
/// `MAX_BATCH`. What a call may fail at on its own (a method that does not
/// exist, params that do not fit its method) is answered in a `200`, so it is
/// described in words: the methods' names are an open enum, a batch's
/// elements may be anything, and the params an object or an array.
pub mod jsonrpc {
    use std::borrow::Cow;

    use utoipa::{
        PartialSchema, ToSchema,
        openapi::{
            AllOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Ref, RefOr, Schema, Type,
            schema::{AdditionalProperties, AnyOfBuilder, SchemaType},
        },
    };

    use crate::rpc::{MAX_BATCH, Method};

    fn any() -> ObjectBuilder {
        ObjectBuilder::new().schema_type(SchemaType::AnyValue)
    }

    fn id() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(SchemaType::Array(vec![Type::String, Type::Number, Type::Null]))
            .description(Some(
                "Echoed in the answer. A call without one is a notification: it runs, and is not answered.",
            ))
    }

    fn version() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["2.0"]))
    }

    /// A request object, or a batch of them.
    pub struct RpcBody;

    impl ToSchema for RpcBody {
        fn name() -> Cow<'static, str> {
            "RpcBody".into()
        }
    }

    impl PartialSchema for RpcBody {
        fn schema() -> RefOr<Schema> {
            OneOfBuilder::new()
                .item(Ref::from_schema_name(RpcRequest::name()))
                .item(
                    ArrayBuilder::new()
                        .items(any())
                        .min_items(Some(1))
                        .max_items(Some(MAX_BATCH))
                        .description(Some(
                            "A batch: its calls run concurrently, and each that is not a notification is answered, \
                             in the batch's order. An element that is not a request object is answered `-32600`.",
                        )),
                )
                .description(Some("One request object, or a batch of 1 to 100."))
                .into()
        }
    }

    /// One call.
    pub struct RpcRequest;

    impl ToSchema for RpcRequest {
        fn name() -> Cow<'static, str> {
            "RpcRequest".into()
        }
    }

    impl PartialSchema for RpcRequest {
        fn schema() -> RefOr<Schema> {
            let methods = ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(Method::ALL.map(Method::as_str)));
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("jsonrpc", version())
                .required("jsonrpc")
                .property(
                    "method",
                    AnyOfBuilder::new()
                        .item(methods)
                        .item(ObjectBuilder::new().schema_type(Type::String))
                        .description(Some(
                            "The method: one of the enum; any other name is answered `-32601`.",
                        )),
                )
                .required("method")
                .property(
                    "params",
                    ObjectBuilder::new()
                        .schema_type(SchemaType::Array(vec![Type::Object, Type::Array]))
                        .description(Some(
                            "By name, as the REST body: `user.create` {email, name, password, idempotency_key?}; \
                             `user.get` {id}; `user.update` {id, email?, name?, password?, role?, \
                             idempotency_key?}; `user.delete` {id, idempotency_key?}; `user.list` \
                             {page_size?, page_token?}; `auth.login` {email, password}. Params that do not \
                             fit (by position, unknown, missing, or a value the field refuses) are answered \
                             `-32602`, with `data.field`.",
                        )),
                )
                .property("id", id())
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                .into()
        }
    }

    /// The answer of a call, or of a batch.
    pub struct RpcAnswer;

    impl ToSchema for RpcAnswer {
        fn name() -> Cow<'static, str> {
            "RpcAnswer".into()
        }
    }

    impl PartialSchema for RpcAnswer {
        fn schema() -> RefOr<Schema> {
            OneOfBuilder::new()
                .item(Ref::from_schema_name(RpcResponse::name()))
                .item(
                    ArrayBuilder::new()
                        .items(Ref::from_schema_name(RpcResponse::name()))
                        .min_items(Some(1))
                        .max_items(Some(MAX_BATCH)),
                )
                .into()
        }
    }

    /// One call's answer: its result, or its error.
    pub struct RpcResponse;

    impl ToSchema for RpcResponse {
        fn name() -> Cow<'static, str> {
            "RpcResponse".into()
        }
    }

    impl PartialSchema for RpcResponse {
        fn schema() -> RefOr<Schema> {
            let data = ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some("What REST's problem document would say."))
                .property(
                    "status",
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .description(Some("The HTTP status REST answers the same failure with.")),
                )
                .required("status")
                .property(
                    "field",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some("The param at fault, when one is.")),
                )
                .property(
                    "retry_after",
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0))
                        .description(Some("Seconds to wait before trying again (REST's `429` and `503`).")),
                )
                .property("trace_id", ObjectBuilder::new().schema_type(Type::String));
            let error = ObjectBuilder::new()
                .schema_type(Type::Object)
                .property(
                    "code",
                    ObjectBuilder::new().schema_type(Type::Integer).description(Some(
                        "-32700, -32600, -32601, -32602 as the specification says; -32000 to -32099 \
                             one per status REST answers (the README's table).",
                    )),
                )
                .required("code")
                .property("message", ObjectBuilder::new().schema_type(Type::String))
                .required("message")
                .property("data", data);
            let result = AllOfBuilder::new().item(any()).description(Some(
                "The body REST answers: a user (`user.create`, `user.get`, `user.update`), a token \
                     (`auth.login`), a page (`user.list`), or `null` (`user.delete`).",
            ));
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("jsonrpc", version())
                .required("jsonrpc")
                .property("result", result)
                .property("error", error)
                .property("id", id())
                .required("id")
                .into()
        }
    }
}

/// The answers several operations share, each written once. An operation
/// lists the sets that apply beside its own answers (its success, and the
/// `400` and `403` whose reasons are its own).
#[allow(
    dead_code,
    reason = "read by the OpenAPI document only; handlers answer with `ApiError`"
)]
pub mod responses {
    use utoipa::IntoResponses;

    use crate::error::Problem;

    /// Every operation: a dependency down, or the deadline passed.
    #[derive(IntoResponses)]
    pub enum Unavailable {
        #[response(
            status = 503,
            description = "A dependency is down or failing (its circuit breaker is open), or the API is serving as many requests as it can; retry after `Retry-After`",
            content_type = "application/problem+json"
        )]
        Down(Problem),
        #[response(
            status = 504,
            description = "The request ran out of time",
            content_type = "application/problem+json"
        )]
        Timeout(Problem),
    }

    /// An operation with a JSON body: too large, or not JSON.
    #[derive(IntoResponses)]
    pub enum BodyRefused {
        #[response(
            status = 413,
            description = "The body is larger than the API takes",
            content_type = "application/problem+json"
        )]
        TooLarge(Problem),
        #[response(
            status = 415,
            description = "The body is not `application/json`",
            content_type = "application/problem+json"
        )]
        NotJson(Problem),
    }

    /// An operation that needs a token.
    #[derive(IntoResponses)]
    #[response(
        status = 401,
        description = "No valid token, or its user no longer exists",
        content_type = "application/problem+json"
    )]
    pub struct Unauthenticated(Problem);

    /// An operation on one user.
    #[derive(IntoResponses)]
    #[response(
        status = 404,
        description = "No such user",
        content_type = "application/problem+json"
    )]
    pub struct NoSuchUser(Problem);

    /// A write that sets an email and takes an `Idempotency-Key`.
    #[derive(IntoResponses)]
    #[response(
        status = 409,
        description = "The email is taken, or a request with this `Idempotency-Key` is still in progress",
        content_type = "application/problem+json"
    )]
    pub struct EmailTakenOrInProgress(Problem);

    /// A write that takes an `Idempotency-Key`.
    #[derive(IntoResponses)]
    #[response(
        status = 422,
        description = "The `Idempotency-Key` was used before for a different request",
        content_type = "application/problem+json"
    )]
    pub struct KeyReused(Problem);
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document's operations, each with its method.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// A response header that is always there. utoipa's `Header` has no field
/// for `required`, so it goes in through the map that serialises beside the
/// header's own fields.
fn required_header(schema: Object, description: &str) -> Header {
    let mut header = Header::new(schema);
    header.description = Some(description.to_owned());
    let mut extensions = Extensions::default();
    extensions.insert("required".to_owned(), true.into());
    header.extensions = Some(extensions);
    header
}

/// What utoipa leaves out of a parameter whose schema comes from
/// `schema_with`: that a path parameter is always required, and the
/// descriptions.
struct ParameterFacts;

impl Modify for ParameterFacts {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in operations(item) {
                for parameter in operation.parameters.iter_mut().flatten() {
                    let RefOr::T(parameter) = parameter else { continue };
                    match parameter.parameter_in {
                        ParameterIn::Path => {
                            parameter.required = Required::True;
                            parameter.description = Some("The user's id.".into());
                        }
                        ParameterIn::Header if parameter.name == "Idempotency-Key" => {
                            parameter.description = Some(
                                "Makes a retry of the write apply once: the same key with the same request \
                                 answers as the first did; with a different request, 422; while the first \
                                 is still in progress, 409."
                                    .into(),
                            );
                        }
                        ParameterIn::Query if parameter.name == "page_size" => {
                            parameter.description = Some("How many users a page holds.".into());
                        }
                        ParameterIn::Query if parameter.name == "page_token" => {
                            parameter.description = Some("`next_page_token` of the previous page.".into());
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

struct SharedHeaders;

impl Modify for SharedHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let traceparent = required_header(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"))
                .build(),
            "The W3C trace context of this request: its trace id finds it in Jaeger and in the logs.",
        );
        let retry_after = required_header(
            ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).build(),
            "Seconds to wait before trying again.",
        );
        let www_authenticate = required_header(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["Bearer"]))
                .build(),
            "The scheme to authenticate with.",
        );
        for item in openapi.paths.paths.values_mut() {
            for operation in operations(item) {
                for (status, response) in operation.responses.responses.iter_mut() {
                    let RefOr::T(response) = response else { continue };
                    response
                        .headers
                        .insert("traceparent".into(), RefOr::T(traceparent.clone()));
                    match status.as_str() {
                        "429" | "503" => {
                            response
                                .headers
                                .insert("Retry-After".into(), RefOr::T(retry_after.clone()));
                        }
                        "401" => {
                            response
                                .headers
                                .insert("WWW-Authenticate".into(), RefOr::T(www_authenticate.clone()));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Where an answer leads: the user a write or a login answered with can be
/// read, changed and deleted next.
struct Links;

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let user_links = |id: &str| {
            [
                ("GetUser", "get_user"),
                ("UpdateUser", "update_user"),
                ("DeleteUser", "delete_user"),
            ]
            .map(|(name, operation)| {
                (
                    name.to_owned(),
                    RefOr::T(LinkBuilder::new().operation_id(operation).parameter("id", id).build()),
                )
            })
        };
        // Not from a listing: its first user is whoever is oldest, most
        // often the administrator, and a page may be empty.
        let links: [(&str, &str, &str, &str); 4] = [
            ("/v1/users", "post", "201", "$response.body#/id"),
            ("/v1/auth/login", "post", "200", "$response.body#/user/id"),
            ("/v1/users/{id}", "get", "200", "$response.body#/id"),
            ("/v1/users/{id}", "patch", "200", "$response.body#/id"),
        ];
        for (path, method, status, id) in links {
            let Some(item) = openapi.paths.paths.get_mut(path) else {
                continue;
            };
            let operation = match method {
                "get" => item.get.as_mut(),
                "post" => item.post.as_mut(),
                "patch" => item.patch.as_mut(),
                _ => None,
            };
            if let Some(RefOr::T(response)) =
                operation.and_then(|operation| operation.responses.responses.get_mut(status))
            {
                response.links.extend(user_links(id));
            }
        }
    }
}
