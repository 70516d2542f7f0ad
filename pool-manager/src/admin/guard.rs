//! What every request must satisfy before a handler sees it: the gateway token on the
//! internal routes, a JSON content type on every write that carries a body, a `Host` the
//! pool-manager answers to (DNS rebinding), and no cross-origin browser request (CSRF).
//! Each refusal is a JSON error; nothing behind the guard runs.
//!
//! Why these rules: a browser can send a cross-site `POST` with `text/plain` or a form
//! type without asking first, but never `application/json`; a page whose host name was
//! rebound to this address carries its own name in `Host`, never an IP literal, `localhost`
//! or a configured name; and a browser always says where a cross-origin request comes from
//! (`Origin`, `Sec-Fetch-Site`). Non-browser clients (mmctl, curl, the filter) send none of
//! the browser headers and are unaffected.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// Path prefix of the gateway's routes: token-authenticated, not Host-checked (see
/// [`check`]).
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
///
/// Internal routes (`/internal/v1/*`) are called by the filter with whatever `:authority`
/// its configuration names (`pool_manager_authority`, not necessarily a resolvable name),
/// so they are not Host-checked: the gateway token authenticates them instead. `/healthz`
/// is not Host-checked either, so a liveness probe never fails on a name.
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
    let method = request.method();
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
    } else if path != "/healthz" && path != mm_wire::READY_PATH {
        if let Some(host) = host(request) {
            if !host_allowed(host, &state.allowed_hosts) {
                return Some(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "Host '{}' is not one this pool-manager answers to; add it with --allowed-host",
                        host.escape_default()
                    ),
                ));
            }
        }
    }
    if let Some(reason) = cross_origin(method, headers, host(request), internal) {
        return Some(ApiError::new(StatusCode::FORBIDDEN, reason));
    }
    if carries_body(method) && !is_json(headers) {
        return Some(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "this call takes a JSON body: send Content-Type: application/json",
        ));
    }
    None
}

/// Writes that carry a body. `DELETE` carries none, and a browser never sends one
/// cross-origin without a CORS preflight, which this server never grants.
fn carries_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The request's `Host` (HTTP/1.1 header, or the URI's authority).
fn host(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
}

/// Splits `host[:port]` (`[v6]:port` too) into the host and the port, if any.
fn split_host(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':')),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (authority, None),
    }
}

/// An IP literal or `localhost` (a browser only sends those when the page itself was loaded
/// from them, so no rebinding is possible), or a name given with `--allowed-host`.
fn host_allowed(authority: &str, allowed: &[String]) -> bool {
    let (name, _) = split_host(authority);
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Why a request is cross-origin, if it is. A top-level navigation (following a link) to a
/// page or a read stays allowed; anything else a browser sends from another origin is
/// refused.
fn cross_origin(
    method: &Method,
    headers: &HeaderMap,
    host: Option<&str>,
    internal: bool,
) -> Option<String> {
    let value = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let navigation = matches!(*method, Method::GET | Method::HEAD)
        && !internal
        && value("sec-fetch-mode") == Some("navigate");
    if let Some(site) = value("sec-fetch-site") {
        let foreign =
            site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site");
        if foreign && !navigation {
            return Some(format!(
                "cross-origin requests are refused (Sec-Fetch-Site: {})",
                site.escape_default()
            ));
        }
    }
    let origin = value(header::ORIGIN.as_str())?;
    if same_origin(origin, host) {
        None
    } else {
        Some(format!(
            "cross-origin requests are refused (Origin '{}' is not this server)",
            origin.escape_default()
        ))
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the server the request was sent to.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // "null" and anything else that is no origin
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let (o_host, o_port) = split_host(authority);
    let (h_host, h_port) = split_host(host);
    o_host.eq_ignore_ascii_case(h_host)
        && o_port.unwrap_or(default_port) == h_port.unwrap_or(default_port)
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

    #[test]
    fn hosts_are_ip_literals_localhost_or_configured() {
        let allowed = vec!["pool-manager.mm.svc".to_owned()];
        for ok in [
            "127.0.0.1:9090",
            "10.1.2.3",
            "[::1]:9090",
            "::1",
            "localhost",
            "LOCALHOST:9090",
            "pool-manager.mm.svc:9090",
            "Pool-Manager.mm.svc",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for refused in [
            "evil.example:9090",
            "127.0.0.1.nip.io",
            "localhost.evil.example",
            "pool-manager",
            "",
            "[::1",
        ] {
            assert!(!host_allowed(refused, &allowed), "{refused}");
        }
    }

    #[test]
    fn origins_match_scheme_host_and_port() {
        let host = Some("localhost:9090");
        assert!(same_origin("http://localhost:9090", host));
        assert!(same_origin("HTTP://LocalHost:9090", host));
        assert!(same_origin("http://localhost", Some("localhost")));
        assert!(same_origin("http://localhost:80", Some("localhost")));
        assert!(same_origin("https://pm.example", Some("pm.example:443")));
        assert!(same_origin("http://[::1]:9090", Some("[::1]:9090")));
        for other in [
            "http://localhost:8080",
            "http://evil.example:9090",
            "null",
            "file://",
            "ftp://localhost:9090",
        ] {
            assert!(!same_origin(other, host), "{other}");
        }
        assert!(!same_origin("http://localhost:9090", None));
    }

    #[test]
    fn only_json_bodies_pass() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        for no in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/jsonx",
        ] {
            assert!(!with(no), "{no}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
