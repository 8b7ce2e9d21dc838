//! The OpenAPI document served at `/openapi.json`, generated from the
//! handlers' annotations so it cannot drift from the code.
//!
//! The schemas of the domain's inputs (`schema`), the answers operations
//! share (`responses`) and JSON-RPC's schemas (`rpc::schema`) live beside
//! what they describe; this module is the root that gathers them.
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

use crate::{error::Problem, rpc, users, wire};

#[derive(OpenApi)]
#[openapi(
    info(title = "callchain API", description = "Users over HTTP, traced end to end."),
    paths(users::register, users::login, users::get_user, users::update_user, users::delete_user, users::list_users,
        rpc::handle),
    components(schemas(
        wire::RegisterRequest, wire::LoginRequest, wire::UpdateRequest, wire::UserBody, wire::TokenBody,
        wire::UserPage, Problem, rpc::schema::RequestOrBatch, rpc::schema::Request, rpc::schema::ResponseOrBatch, rpc::schema::Response, rpc::schema::ErrorObject
    )),
    modifiers(&BearerAuth, &ParameterFacts, &SharedHeaders, &Links)
)]
pub struct ApiDoc;

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
