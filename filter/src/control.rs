//! Calls from the filter to the pool-manager (route calls, the table long poll, usage and
//! failure reports): one place builds them, so every call carries the configured cluster,
//! authority and gateway token, and one place reads their answers.

use std::time::Duration;

use mm_wire::ErrorBody;

use crate::config::Config;
use crate::decision::parse_status;
use crate::host::{Buffer, Call, Host, HostError, Map};

/// Request header that carries the gateway token to the pool-manager's internal routes.
pub use mm_wire::GATEWAY_TOKEN_HEADER;

/// Most bytes of an error answer read for the log.
const MAX_ERROR_ANSWER_BYTES: usize = 1024;

/// `GET path` on the pool-manager, asking for JSON; returns the call's token.
pub fn get(
    host: &mut impl Host,
    config: &Config,
    path: &str,
    timeout: Duration,
) -> Result<u32, HostError> {
    call(
        host,
        config,
        ("GET", path),
        ("accept", "application/json"),
        None,
        timeout,
    )
}

/// `POST path` on the pool-manager with a JSON body; returns the call's token.
pub fn post_json(
    host: &mut impl Host,
    config: &Config,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<u32, HostError> {
    call(
        host,
        config,
        ("POST", path),
        ("content-type", "application/json"),
        Some(body),
        timeout,
    )
}

fn call(
    host: &mut impl Host,
    config: &Config,
    (method, path): (&str, &str),
    json: (&str, &str),
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, HostError> {
    let mut headers = vec![
        (":method", method),
        (":path", path),
        (":authority", config.pool_manager_authority.as_str()),
        json,
    ];
    if let Some(token) = &config.gateway_token {
        headers.push((GATEWAY_TOKEN_HEADER, token.as_str()));
    }
    host.dispatch(&Call {
        cluster: &config.pool_manager_cluster,
        headers: &headers,
        body,
        timeout,
    })
}

/// The `:status` of the answer being handled; `None` when the call failed (Envoy reports a
/// connect failure, reset or timeout as an answer without headers).
pub fn answer_status(host: &mut impl Host) -> Option<u16> {
    host.header(Map::CallHeaders, ":status")
        .and_then(|raw| parse_status(&raw))
}

/// Up to `max` bytes of the answer's body (`size` as Envoy reported it).
pub fn answer_body(host: &mut impl Host, size: usize, max: usize) -> Vec<u8> {
    if size == 0 {
        return Vec::new();
    }
    host.body(Buffer::CallBody, 0, size.min(max))
        .unwrap_or_default()
}

/// The answer for a log line: its status and the `error` of a JSON error body.
pub fn describe_answer(host: &mut impl Host, status: Option<u16>, size: usize) -> String {
    match status {
        None => "no answer (connect failure, reset or timeout)".to_owned(),
        Some(status) => {
            let body = answer_body(host, size, MAX_ERROR_ANSWER_BYTES);
            match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(ErrorBody { error }) => format!("status {status}: {error}"),
                Err(_) => format!("status {status}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Token;
    use crate::host::fake::FakeHost;

    #[test]
    fn every_call_carries_cluster_authority_and_token() {
        let mut host = FakeHost::new();
        let mut config = Config::default();
        get(
            &mut host,
            &config,
            "/internal/v1/route/m",
            Duration::from_secs(1),
        )
        .unwrap();
        config.gateway_token = Some(Token::new("s3cret").unwrap());
        post_json(
            &mut host,
            &config,
            "/internal/v1/usage",
            b"{}",
            Duration::from_secs(2),
        )
        .unwrap();
        let calls = host.dispatches();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].cluster, "pool_manager");
        assert_eq!(calls[0].header(":method"), Some("GET"));
        assert_eq!(calls[0].header(":authority"), Some("pool-manager"));
        assert_eq!(calls[0].header("accept"), Some("application/json"));
        assert_eq!(calls[0].header(GATEWAY_TOKEN_HEADER), None);
        assert_eq!(calls[1].header(":method"), Some("POST"));
        assert_eq!(calls[1].header("content-type"), Some("application/json"));
        assert_eq!(calls[1].header(GATEWAY_TOKEN_HEADER), Some("s3cret"));
        assert_eq!(calls[1].body.as_deref(), Some(&b"{}"[..]));
        assert_eq!(calls[1].timeout, Duration::from_secs(2));
    }

    #[test]
    fn reads_answers() {
        let mut host = FakeHost::new();
        assert_eq!(answer_status(&mut host), None);
        assert_eq!(
            describe_answer(&mut host, None, 0),
            "no answer (connect failure, reset or timeout)"
        );
        host.set_map(Map::CallHeaders, &[(":status", "401")]);
        host.buffers
            .insert(Buffer::CallBody, br#"{"error":"bad token"}"#.to_vec());
        assert_eq!(answer_status(&mut host), Some(401));
        assert_eq!(
            describe_answer(&mut host, Some(401), 21),
            "status 401: bad token"
        );
        assert_eq!(answer_body(&mut host, 21, 5), b"{\"err");
    }
}
