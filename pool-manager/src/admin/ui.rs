//! The status page (`/ui`): three static files compiled into the binary, with no build step
//! and nothing fetched from elsewhere. The page only reads the admin API a script would use
//! (`/api/v1/replicas`, `/api/v1/models`, `/api/v1/events`, `/api/v1/summary`), so it
//! needs no token.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use mm_wire::ErrorBody;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// The routes of this module.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(index_slash))
        .routes(routes!(app_js))
        .routes(routes!(style_css))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small files; a new binary must show its own page at once.
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The status page.
#[utoipa::path(get, path = "/ui", tag = "ui", responses(
    (status = 200, description = "the page", body = String, content_type = "text/html; charset=utf-8"),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody)))]
async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The status page's other address.
#[utoipa::path(get, path = "/ui/", tag = "ui", responses(
    (status = 308, description = "to /ui"),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody)))]
async fn index_slash() -> Redirect {
    Redirect::permanent("/ui")
}

/// The status page's script.
#[utoipa::path(get, path = "/ui/app.js", tag = "ui", responses(
    (status = 200, description = "the script", body = String, content_type = "text/javascript; charset=utf-8"),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody)))]
async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// The status page's style sheet.
#[utoipa::path(get, path = "/ui/style.css", tag = "ui", responses(
    (status = 200, description = "the style sheet", body = String, content_type = "text/css; charset=utf-8"),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody)))]
async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}
