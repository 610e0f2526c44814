//! Every error the API returns: a status and a JSON body `{"error": "..."}` naming the thing
//! and what to do.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// A refusal from an n0m1-ctl command (the row is inactive, the manager unknown, …) is a
    /// conflict with the state of the system; a database that cannot be read is unavailable.
    pub fn refused(error: anyhow::Error) -> ApiError {
        let text = n0m1_core::text::error_chain(error.as_ref());
        let database = error
            .chain()
            .any(|cause| cause.downcast_ref::<rusqlite::Error>().is_some());
        let status = if database {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::CONFLICT
        };
        ApiError::new(status, text)
    }

    /// A database read that failed.
    pub fn database(what: &str, error: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read {what}: {error}; try again"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        (self.status, body).into_response()
    }
}
