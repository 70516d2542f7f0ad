//! The HTTP client of the admin API, and the one error type every command returns: each
//! variant has its own exit code, from the answer's status class or the transport failure.

use std::io::BufRead;
use std::time::Duration;

use reqwest::blocking::{RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Why a command failed; [`Error::exit_code`] is what the process exits with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Anything else: a file that cannot be read, an answer that is not JSON (exit 1).
    #[error("{0}")]
    Other(String),
    /// The model or replica does not exist (404; exit 3).
    #[error("not found: {0}")]
    NotFound(String),
    /// The server refused the request as invalid, or a local file is not a valid spec
    /// (4xx other than 401/403/404; exit 4).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The admin token is missing or wrong (401/403; exit 5).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The server failed or is unavailable, or did not answer in time (5xx; exit 6).
    #[error("server error: {0}")]
    Server(String),
    /// No connection to the pool-manager (exit 7).
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
}

impl Error {
    /// The process exit code for this error (documented in `mmctl --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Other(_) => 1,
            Error::NotFound(_) => 3,
            Error::Invalid(_) => 4,
            Error::Unauthorized(_) => 5,
            Error::Server(_) => 6,
            Error::Connect { .. } => 7,
        }
    }

    /// The error for a non-success answer: its status class and the server's message.
    pub fn from_status(status: StatusCode, body: &str) -> Self {
        let message = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| {
                let text = body.trim();
                if text.is_empty() {
                    status.to_string()
                } else {
                    format!("{status}: {}", truncate(text, 300))
                }
            });
        match status.as_u16() {
            404 => Error::NotFound(message),
            401 | 403 => Error::Unauthorized(message),
            400..=499 => Error::Invalid(message),
            _ => Error::Server(message),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A client of one pool-manager.
pub struct Client {
    base: url::Url,
    token: Option<String>,
    http: reqwest::blocking::Client,
    /// For streams: no overall timeout.
    streaming: reqwest::blocking::Client,
}

impl Client {
    /// A client of the admin API at `base`, sending `token` as a bearer token if given.
    pub fn new(base: url::Url, token: Option<String>, timeout: Duration) -> Result<Self, Error> {
        let build = |timeout: Option<Duration>| {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| Error::Other(format!("building the HTTP client: {e}")))
        };
        Ok(Self {
            base,
            token: token.filter(|t| !t.trim().is_empty()),
            http: build(Some(timeout))?,
            streaming: build(None)?,
        })
    }

    /// The absolute URL of `path` (which starts with `/`), keeping any base path prefix.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.as_str().trim_end_matches('/'))
    }

    fn request(
        &self,
        http: &reqwest::blocking::Client,
        method: Method,
        path: &str,
    ) -> RequestBuilder {
        let mut request = http.request(method, self.url(path));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.trim());
        }
        request
    }

    fn send(&self, request: RequestBuilder) -> Result<Response, Error> {
        request.send().map_err(|e| self.transport(&e))
    }

    fn transport(&self, e: &reqwest::Error) -> Error {
        let reason = std::error::Error::source(e)
            .map(|s| deepest(s).to_string())
            .unwrap_or_else(|| e.to_string());
        if e.is_connect() {
            Error::Connect {
                url: self.base.to_string(),
                reason,
            }
        } else if e.is_timeout() {
            Error::Server(format!("no answer from {} in time: {reason}", self.base))
        } else {
            Error::Server(format!("{}: {reason}", self.base))
        }
    }

    /// Sends `method path` with an optional JSON body; returns the status and JSON answer,
    /// or the error its status stands for.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), Error> {
        // Every write is JSON, with a body or not: the pool-manager refuses a POST or PUT
        // of any other type (a browser can send those cross-site without asking).
        let writes = matches!(method, Method::POST | Method::PUT | Method::PATCH);
        let mut request = self.request(&self.http, method, path);
        if writes || body.is_some() {
            request = request.header("content-type", "application/json");
        }
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = self.send(request)?;
        let status = response.status();
        let text = response.text().map_err(|e| self.transport(&e))?;
        if !status.is_success() {
            return Err(Error::from_status(status, &text));
        }
        let json = serde_json::from_str(&text).map_err(|e| {
            Error::Other(format!(
                "the answer to {path} is not JSON ({e}): {}",
                truncate(&text, 200)
            ))
        })?;
        Ok((status, json))
    }

    pub fn get(&self, path: &str) -> Result<Value, Error> {
        self.call(Method::GET, path, None).map(|(_, v)| v)
    }

    /// Reads the Server-Sent Events stream at `path`, calling `each` with every event's
    /// JSON data until the server ends the stream (`Ok`) or `each` fails.
    pub fn stream(
        &self,
        path: &str,
        mut each: impl FnMut(Value) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let request = self
            .request(&self.streaming, Method::GET, path)
            .header("accept", "text/event-stream");
        let response = self.send(request)?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().unwrap_or_default();
            return Err(Error::from_status(status, &text));
        }
        let mut data = String::new();
        for line in std::io::BufReader::new(response).lines() {
            let line = line.map_err(|e| Error::Server(format!("event stream broke: {e}")))?;
            if line.is_empty() {
                if !data.is_empty() {
                    let value = serde_json::from_str(&data)
                        .map_err(|e| Error::Other(format!("an event is not JSON ({e})")))?;
                    each(value)?;
                    data.clear();
                }
            } else if let Some(rest) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            }
            // `id:`, `event:` and `:` comment (keep-alive) lines need nothing.
        }
        Ok(())
    }
}

fn deepest<'a>(
    mut e: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    while let Some(next) = e.source() {
        e = next;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_exit_codes() {
        let cases = [
            (404, r#"{"error":"model 'x' is not registered"}"#, 3),
            (400, r#"{"error":"invalid model spec: missing field"}"#, 4),
            (413, "", 4),
            (401, r#"{"error":"needs the token"}"#, 5),
            (403, "", 5),
            (503, r#"{"error":"no healthy replica"}"#, 6),
            (500, "oops", 6),
        ];
        for (status, body, code) in cases {
            let e = Error::from_status(StatusCode::from_u16(status).unwrap(), body);
            assert_eq!(e.exit_code(), code, "{status}: {e}");
        }
        let e = Error::from_status(
            StatusCode::NOT_FOUND,
            r#"{"error":"model 'x' is not registered"}"#,
        );
        assert_eq!(e.to_string(), "not found: model 'x' is not registered");
    }

    #[test]
    fn keeps_a_base_path() {
        let c = Client::new(
            url::Url::parse("http://pm:9090/admin/").unwrap(),
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            c.url("/api/v1/models"),
            "http://pm:9090/admin/api/v1/models"
        );
    }

    #[test]
    fn a_refused_connection_is_exit_7() {
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Client::new(
            url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            None,
            Duration::from_secs(2),
        )
        .unwrap();
        let e = c.get("/api/v1/models").unwrap_err();
        assert_eq!(e.exit_code(), 7, "{e}");
    }
}
