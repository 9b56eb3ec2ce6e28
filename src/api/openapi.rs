//! The OpenAPI document, collected from every handler's `#[utoipa::path]` (`infini openapi` prints
//! it; `openapi/openapi.json` is the committed copy a test compares against).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{completions, error, ops, sessions, types};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "infini",
        description = "OpenAI-compatible chat with a persistent, unbounded per-session memory (the ∞-former).",
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
        ops::health,
        ops::ready,
        ops::metrics,
        ops::openapi,
        ops::docs,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, types::ChatCompletionChunk, types::Usage)),
    modifiers(&BearerAuth),
    tags(
        (name = "openai", description = "OpenAI-compatible endpoints"),
        (name = "sessions", description = "Sessions whose memory the server keeps"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
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
