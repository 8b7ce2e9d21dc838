//! The OpenAPI document tells the truth: every limit the domain enforces is
//! a schema keyword of the same value, parameters sit where the handlers
//! read them, and every operation lists each status it can answer, with
//! problem documents and the headers every answer carries. The document is
//! read as a client reads it, from `GET /openapi.json`.

use std::collections::BTreeSet;

use axum::{body::Body, http::Request};
use callchain_api::{AppState, Config, router};
use callchain_domain::{Email, IdempotencyKey, PageSize, Password, Role, UserId, UserName};
use serde_json::{Value, json};
use tower::ServiceExt as _;

async fn document() -> Value {
    let config = Config::for_tests(
        "http://127.0.0.1:1".into(),
        "callchain-openapi-test-secret-0123456789".into(),
    );
    let app = router(AppState::new(&config).unwrap(), &config);
    let response = app
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    &doc["components"]["schemas"][name]
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let operation = &doc["paths"][path][method];
    assert!(operation.is_object(), "{method} {path} is missing");
    operation
}

fn parameter<'a>(operation: &'a Value, name: &str) -> &'a Value {
    operation["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|parameter| parameter["name"] == name)
        .unwrap_or_else(|| panic!("no parameter {name} in {operation}"))
}

fn assert_email(field: &Value) {
    assert_eq!(field["maxLength"], json!(Email::MAX_CHARS));
    assert_eq!(field["pattern"], Email::PATTERN);
}

fn assert_name(field: &Value) {
    assert_eq!(field["minLength"], 1);
    assert_eq!(field["maxLength"], json!(UserName::MAX_CHARS));
    assert_eq!(field["pattern"], UserName::PATTERN);
}

fn assert_password(field: &Value) {
    assert_eq!(field["minLength"], json!(Password::MIN_CHARS));
    assert_eq!(field["maxLength"], json!(Password::MAX_CHARS));
    assert_eq!(field["pattern"], Password::PATTERN);
    assert_eq!(field["writeOnly"], true);
}

fn assert_user_id(field: &Value) {
    assert_eq!(field["format"], "uuid");
    assert_eq!(field["pattern"], UserId::PATTERN);
}

#[tokio::test]
async fn bodies_carry_the_domains_limits_and_refuse_other_fields() {
    let doc = document().await;
    for name in ["RegisterRequest", "LoginRequest", "UpdateRequest"] {
        let body = schema(&doc, name);
        assert_eq!(body["additionalProperties"], false, "{name}");
        assert_email(&body["properties"]["email"]);
        assert_password(&body["properties"]["password"]);
    }
    assert_name(&schema(&doc, "RegisterRequest")["properties"]["name"]);
    let update = schema(&doc, "UpdateRequest");
    assert_name(&update["properties"]["name"]);
    assert_eq!(update["minProperties"], 1, "an empty change is refused");
    assert!(update.get("required").is_none_or(|required| required == &json!([])));
    let roles: Vec<&str> = Role::ALL.iter().map(|role| role.as_str()).collect();
    assert_eq!(update["properties"]["role"]["enum"], json!(roles));
    assert_eq!(schema(&doc, "UserBody")["properties"]["role"]["enum"], json!(roles));
    assert_user_id(&schema(&doc, "UserBody")["properties"]["id"]);
}

#[tokio::test]
async fn parameters_sit_where_the_handlers_read_them() {
    let doc = document().await;
    let list = operation(&doc, "get", "/v1/users");
    let page_size = parameter(list, "page_size");
    assert_eq!(page_size["in"], "query");
    assert_eq!(page_size["required"], false);
    assert_eq!(page_size["schema"]["type"], "integer");
    assert_eq!(page_size["schema"]["minimum"], json!(PageSize::MIN));
    assert_eq!(page_size["schema"]["maximum"], json!(PageSize::MAX));
    assert_eq!(page_size["schema"]["default"], json!(PageSize::DEFAULT.get()));
    let page_token = parameter(list, "page_token");
    assert_eq!(page_token["in"], "query");
    assert_eq!(page_token["required"], false);
    assert_user_id(&page_token["schema"]);

    for method in ["get", "patch", "delete"] {
        let id = parameter(operation(&doc, method, "/v1/users/{id}"), "id");
        assert_eq!(id["in"], "path", "{method}");
        assert_eq!(id["required"], true, "{method}");
        assert_user_id(&id["schema"]);
    }
    for (method, path) in [
        ("post", "/v1/users"),
        ("patch", "/v1/users/{id}"),
        ("delete", "/v1/users/{id}"),
    ] {
        let key = parameter(operation(&doc, method, path), "Idempotency-Key");
        assert_eq!(key["in"], "header", "{method} {path}");
        assert_eq!(key["required"], false, "{method} {path}");
        assert_eq!(key["schema"]["minLength"], 1);
        assert_eq!(key["schema"]["maxLength"], json!(IdempotencyKey::MAX_CHARS));
        assert_eq!(key["schema"]["pattern"], IdempotencyKey::PATTERN);
    }
}

#[tokio::test]
async fn every_operation_lists_each_status_it_answers_with_problem_documents() {
    let doc = document().await;
    let expected: [(&str, &str, &[u16]); 6] = [
        ("post", "/v1/users", &[201, 400, 409, 413, 415, 422, 429, 503, 504]),
        ("post", "/v1/auth/login", &[200, 400, 401, 413, 415, 429, 503, 504]),
        ("get", "/v1/users", &[200, 400, 401, 403, 503, 504]),
        ("get", "/v1/users/{id}", &[200, 400, 401, 403, 404, 503, 504]),
        (
            "patch",
            "/v1/users/{id}",
            &[200, 400, 401, 403, 404, 409, 413, 415, 422, 503, 504],
        ),
        (
            "delete",
            "/v1/users/{id}",
            &[204, 400, 401, 403, 404, 409, 422, 503, 504],
        ),
    ];
    for (method, path, statuses) in expected {
        let responses = operation(&doc, method, path)["responses"].as_object().unwrap();
        let listed: BTreeSet<u16> = responses.keys().map(|status| status.parse().unwrap()).collect();
        assert_eq!(listed, statuses.iter().copied().collect(), "{method} {path}");
        for (status, response) in responses {
            let label = format!("{method} {path} {status}");
            let traceparent = &response["headers"]["traceparent"];
            assert_eq!(traceparent["required"], true, "{label}");
            if status.starts_with('2') {
                continue;
            }
            assert_eq!(
                response["content"]["application/problem+json"]["schema"]["$ref"], "#/components/schemas/Problem",
                "{label}"
            );
            match status.as_str() {
                "401" => assert_eq!(response["headers"]["WWW-Authenticate"]["required"], true, "{label}"),
                "429" | "503" => assert_eq!(response["headers"]["Retry-After"]["required"], true, "{label}"),
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn security_is_declared_per_operation() {
    let doc = document().await;
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for (method, path) in [("post", "/v1/users"), ("post", "/v1/auth/login")] {
        assert_eq!(
            operation(&doc, method, path)["security"],
            json!([{}]),
            "{method} {path} is open"
        );
    }
    for (method, path) in [
        ("get", "/v1/users"),
        ("get", "/v1/users/{id}"),
        ("patch", "/v1/users/{id}"),
        ("delete", "/v1/users/{id}"),
    ] {
        assert_eq!(
            operation(&doc, method, path)["security"],
            json!([{ "bearer": [] }]),
            "{method} {path} needs a token"
        );
    }
}

#[tokio::test]
async fn the_jsonrpc_endpoint_is_described_as_it_answers() {
    let doc = document().await;
    let rpc = operation(&doc, "post", "/rpc");
    let listed: BTreeSet<&str> = rpc["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(listed, BTreeSet::from(["200", "204", "400", "413", "415", "504"]));
    assert_eq!(rpc["security"], json!([{}, { "bearer": [] }]), "a token is optional");
    assert_eq!(
        rpc["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/JsonRpcRequestOrBatch"
    );

    let body = schema(&doc, "JsonRpcRequestOrBatch");
    let batch = &body["oneOf"][1];
    assert_eq!(
        (batch["minItems"].clone(), batch["maxItems"].clone()),
        (json!(1), json!(100))
    );
    assert_eq!(
        batch["items"],
        json!({}),
        "a batch's elements are answered one by one, whatever they are"
    );

    let request = schema(&doc, "JsonRpcRequest");
    assert_eq!(request["additionalProperties"], false);
    assert_eq!(request["required"], json!(["jsonrpc", "method"]));
    assert_eq!(request["properties"]["jsonrpc"]["enum"], json!(["2.0"]));
    assert_eq!(
        request["properties"]["method"]["anyOf"][0]["enum"],
        json!([
            "user.create",
            "user.get",
            "user.update",
            "user.delete",
            "user.list",
            "auth.login"
        ])
    );
    assert_eq!(request["properties"]["params"]["type"], json!(["object", "array"]));
    assert_eq!(request["properties"]["id"]["type"], json!(["string", "number", "null"]));
}
