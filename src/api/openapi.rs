//! The OpenAPI document, collected from every handler's `#[utoipa::path]` (`infini openapi` prints
//! it; `openapi/openapi.json` is the committed copy a test compares against), and the two routes
//! that serve it: `/openapi.json` and the `/docs` page.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{completions, error, memory_map, ops, playground, sessions, types};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "infini",
        description = "OpenAI-compatible chat with a persistent, unbounded per-session memory (the ∞-former).\n\nAuthentication: a server started with API keys (`--api-keys`, `--api-keys-file`) requires `Authorization: Bearer <key>` on every `/v1` route and answers 401 without it; a server started without keys is open, and any or no key is accepted. Request bodies are JSON (`Content-Type: application/json`, one JSON value); errors use OpenAI's shape `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`.",
        license(name = "Apache-2.0")
    ),
    paths(
        completions::chat_completions,
        completions::completions,
        ops::models,
        sessions::create,
        sessions::list,
        sessions::get,
        sessions::delete,
        sessions::fork,
        sessions::export,
        sessions::import,
        memory_map::memory_map,
        ops::health,
        ops::ready,
        ops::metrics,
        openapi,
        docs,
        playground::page,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, types::ChatCompletionChunk, types::Usage)),
    modifiers(&BearerAuth, &Conventions),
    tags(
        (name = "openai", description = "OpenAI-compatible endpoints"),
        (name = "sessions", description = "Sessions whose memory the server keeps"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "playground", description = "The browser page: a chat beside its memory map"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What holds for every route of a kind, written once: a route that takes a key accepts none on
/// an open server (an empty security requirement beside the bearer one) and lists 401; a route
/// with a body lists 413 and 415; a route with a path parameter lists 400.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                apply_conventions(operation);
            }
        }
    }
}

fn apply_conventions(operation: &mut Operation) {
    let keyed = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    if keyed {
        operation.security = Some(vec![
            SecurityRequirement::default(),
            SecurityRequirement::new("bearer", Vec::<String>::new()),
        ]);
        add_error(
            operation,
            "401",
            "Missing or invalid API key (only when the server has keys)",
        );
    }
    if operation.request_body.is_some() {
        add_error(
            operation,
            "413",
            "The request body is larger than this server's limit",
        );
        add_error(
            operation,
            "415",
            "The request body is not declared as `application/json`",
        );
    }
    let has_path_parameter = operation
        .parameters
        .iter()
        .flatten()
        .any(|p| matches!(p.parameter_in, ParameterIn::Path));
    if has_path_parameter {
        add_error(operation, "400", "A malformed path parameter");
    }
}

/// Lists `status` with OpenAI's error body, unless the route already describes it.
fn add_error(operation: &mut Operation, status: &str, description: &str) {
    let response = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build();
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert(RefOr::T(response));
}

impl ApiDoc {
    /// The document as pretty JSON with a final newline (the committed file's form).
    pub fn json() -> String {
        let mut text = ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serialises");
        text.push('\n');
        text
    }
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], ApiDoc::json()).into_response()
}

/// A self-contained page that renders `/openapi.json` (no external assets).
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "HTML", content_type = "text/html")))]
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
