//! The OpenAPI document served at `/openapi.json`, generated from the
//! handlers' annotations so it cannot drift from the code.

use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{error::Problem, users};

#[derive(OpenApi)]
#[openapi(
    info(title = "callchain API", description = "Users over HTTP, traced end to end."),
    paths(users::register, users::login, users::get_user, users::update_user, users::delete_user, users::list_users),
    components(schemas(
        users::RegisterRequest, users::LoginRequest, users::UpdateRequest, users::UserBody, users::TokenBody,
        users::UserPage, Problem
    )),
    modifiers(&BearerAuth)
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
