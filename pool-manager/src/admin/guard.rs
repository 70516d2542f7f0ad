//! What every request must satisfy before a handler sees it: the gateway token on the
//! internal routes. Each refusal is a JSON error; nothing behind the guard runs.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// Path prefix of the gateway's routes, token-authenticated.
const INTERNAL_PREFIX: &str = "/internal/";

/// Whether `given` equals `secret`, in time independent of where they differ and of their
/// lengths (both are hashed first).
pub(super) fn same_secret(given: &str, secret: &str) -> bool {
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(secret.as_bytes()),
    );
    a.ct_eq(&b).into()
}

/// The guard, as an axum middleware over the whole router (the fallback included).
pub async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match refusal(&state, &request) {
        Some(error) => {
            if error.status == StatusCode::UNAUTHORIZED {
                state.pool.metrics().internal_unauthorized.inc();
            }
            error.into_response()
        }
        None => next.run(request).await,
    }
}

fn refusal(state: &AppState, request: &Request) -> Option<ApiError> {
    let path = request.uri().path();
    let headers = request.headers();
    let internal = path.starts_with(INTERNAL_PREFIX);
    if internal {
        if let Some(token) = &state.gateway_token {
            let given = headers
                .get(mm_wire::GATEWAY_TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !same_secret(given, token) {
                return Some(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "internal routes need the gateway token ({})",
                        mm_wire::GATEWAY_TOKEN_HEADER
                    ),
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("s3cret", "s3cret"));
        for wrong in ["", "s3cre", "s3cret ", "S3cret", "x"] {
            assert!(!same_secret(wrong, "s3cret"), "{wrong:?}");
        }
    }
}
