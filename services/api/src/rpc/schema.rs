//! The schemas of `POST /rpc`. They state what the endpoint refuses whole
//! (HTTP `400`): a body that is not a request object or a batch of 1 to
//! `MAX_BATCH`. What a call may fail at on its own (a method that does not
//! exist, params that do not fit its method) is answered in a `200`, so it is
//! described in words: the methods' names are an open enum, a batch's
//! elements may be anything, and the params an object or an array.

use std::borrow::Cow;

use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        AllOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Ref, RefOr, Schema, Type,
        schema::{AdditionalProperties, AnyOfBuilder, SchemaType},
    },
};

use super::{MAX_BATCH, Method};

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
pub struct RequestOrBatch;

impl ToSchema for RequestOrBatch {
    fn name() -> Cow<'static, str> {
        "JsonRpcRequestOrBatch".into()
    }
}

impl PartialSchema for RequestOrBatch {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Ref::from_schema_name(Request::name()))
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
pub struct Request;

impl ToSchema for Request {
    fn name() -> Cow<'static, str> {
        "JsonRpcRequest".into()
    }
}

impl PartialSchema for Request {
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
pub struct ResponseOrBatch;

impl ToSchema for ResponseOrBatch {
    fn name() -> Cow<'static, str> {
        "JsonRpcResponseOrBatch".into()
    }
}

impl PartialSchema for ResponseOrBatch {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Ref::from_schema_name(Response::name()))
            .item(
                ArrayBuilder::new()
                    .items(Ref::from_schema_name(Response::name()))
                    .min_items(Some(1))
                    .max_items(Some(MAX_BATCH)),
            )
            .into()
    }
}

/// One call's answer: its result, or its error.
pub struct Response;

impl ToSchema for Response {
    fn name() -> Cow<'static, str> {
        "JsonRpcResponse".into()
    }
}

impl PartialSchema for Response {
    fn schema() -> RefOr<Schema> {
        let result = AllOfBuilder::new().item(any()).description(Some(
            "The body REST answers: a user (`user.create`, `user.get`, `user.update`), a token \
                 (`auth.login`), a page (`user.list`), or `null` (`user.delete`).",
        ));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("jsonrpc", version())
            .required("jsonrpc")
            .property("result", result)
            .property("error", Ref::from_schema_name(ErrorObject::name()))
            .property("id", id())
            .required("id")
            .into()
    }
}

/// The error object of a response that failed: its code, its message, and
/// the data REST's problem document would hold.
pub struct ErrorObject;

impl ToSchema for ErrorObject {
    fn name() -> Cow<'static, str> {
        "JsonRpcErrorObject".into()
    }
}

impl PartialSchema for ErrorObject {
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
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "code",
                ObjectBuilder::new().schema_type(Type::Integer).description(Some(
                    "-32700, -32600, -32601, -32602 as the specification says; -32000 to -32099 \
                         one per status REST answers (ARCHITECTURE.md's error table).",
                )),
            )
            .required("code")
            .property("message", ObjectBuilder::new().schema_type(Type::String))
            .required("message")
            .property("data", data)
            .into()
    }
}
