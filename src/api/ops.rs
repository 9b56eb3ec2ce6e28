//! Operations routes, public: `/health` (alive), `/ready` (model loaded, database reachable, not
//! draining), `/metrics` (Prometheus); and `/v1/models`. (`/openapi.json` and `/docs` are served
//! by `openapi.rs`, beside the document.)

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::metrics::Gauges;
use super::types::{ModelCard, ModelList};
use super::AppState;

/// `/health` and `/ready` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok`, `loading` or `draining`.
    pub status: &'static str,
}

/// The process is alive.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = Status)))]
pub async fn health() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Ready for traffic: the model is loaded and the server is not draining (else 503).
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = Status), (status = 503, body = Status)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let status = if state.draining.load(Ordering::SeqCst) {
        "draining"
    } else if state.engine.info().is_none() {
        "loading"
    } else {
        "ok"
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(Status { status })).into_response()
}

/// Prometheus metrics (`infini_` prefix).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let gauges = Gauges {
        in_flight: state.engine.load(),
        hot_sessions: state.hot.live(),
        cancelled: state.engine.cancelled(),
        draining: state.draining.load(Ordering::SeqCst),
        pool: state.hot.pool(),
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(gauges, state.engine.stats()),
    )
        .into_response()
}

/// The served model.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn models(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<ModelList>, ApiError> {
    Ok(Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.model_name.to_string(),
            object: "model",
            created: state.started_at,
            owned_by: "infini",
        }],
    }))
}
