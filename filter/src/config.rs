//! Plugin configuration: the JSON the Envoy config hands the filter (`configuration` of the
//! Wasm plugin). Parsed once per worker VM in `on_configure`; a value of [`Config`] is
//! always valid, so the request path never re-checks it.

use std::fmt;
use std::time::Duration;

use mm_wire::MAX_TABLE_WAIT_MS;
use serde::Deserialize;

/// Longest route-call timeout accepted: 10 minutes. A model load can take long, but a
/// request that waits longer than this is better refused.
pub const MAX_ROUTE_TIMEOUT_MS: u64 = 600_000;

/// Shortest and longest usage report period accepted, in ms.
pub const USAGE_REPORT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=60_000;

/// Longest a usage report call may take: a report that is late is replaced by the next one.
pub const MAX_USAGE_REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Shortest and longest table refresh tick accepted, in ms.
pub const TABLE_REFRESH_MS_RANGE: std::ops::RangeInclusive<u64> = 50..=10_000;

/// Shortest and longest hold asked of the pool-manager's table long poll, in ms. A very
/// short hold would make the leader poll in a tight loop while nothing changes.
pub const TABLE_WAIT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=MAX_TABLE_WAIT_MS;

/// How the filter reaches the pool-manager. Every key is optional; absent or empty
/// configuration means all defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Name of the Envoy cluster that leads to the pool-manager (`dispatch_http_call`
    /// target). Default `pool_manager`.
    pub pool_manager_cluster: String,
    /// `:authority` sent on the route call. Default `pool-manager`.
    pub pool_manager_authority: String,
    /// How long the route call may take, in ms (it may include a model load): 1 to
    /// [`MAX_ROUTE_TIMEOUT_MS`]. Default 70000.
    pub route_timeout_ms: u64,
    /// How often each worker sends its usage report, in ms: 100 to 60000
    /// ([`USAGE_REPORT_MS_RANGE`]). Default 1000.
    pub usage_report_ms: u64,
    /// How often each worker checks for a new routing table in shared data (and the leader
    /// renews its lease), in ms: 50 to 10000 ([`TABLE_REFRESH_MS_RANGE`]). Default 200.
    pub table_refresh_ms: u64,
    /// How long the leader's table long poll asks the pool-manager to hold the call while
    /// nothing changes, in ms: 100 to 30000 ([`TABLE_WAIT_MS_RANGE`]). Default 10000.
    pub table_wait_ms: u64,
    /// Largest request body the gateway passes on, in bytes: 1 KiB to 1 GiB
    /// ([`MAX_REQUEST_BYTES_RANGE`]). Larger requests get 413. Default 32 MiB.
    pub max_request_bytes: u64,
    /// The secret the filter sends as `x-mm-gateway-token` on every call to the
    /// pool-manager. Takes precedence over `gateway_token_env`. Default: none.
    pub gateway_token: Option<Token>,
    /// The environment variable that holds the gateway token when `gateway_token` is not
    /// set (Envoy passes it to the VM with `vm_config.environment_variables.host_env_keys`).
    /// Default `MM_GATEWAY_TOKEN`.
    pub gateway_token_env: String,
    /// Whether Envoy hands the filter a request's body while the filter holds its headers
    /// (`allow_on_headers_stop_iteration: true` in the Envoy config). Istio's WasmPlugin
    /// cannot set that: with `false`, a request that would need its body while it is held
    /// (gRPC without a model header) is refused at once instead of waiting for the route
    /// timeout, and a KServe V1 request is translated after it is let go. Default true.
    pub bodies_while_paused: bool,
    /// Whether every routed response names its replica in `x-mm-replica` (for operators
    /// and tests). Setting the header is one host call per request, about 3% of a warm
    /// request's Envoy instructions (BENCHMARKS.md); `false` saves it. Default true.
    pub replica_header: bool,
}

/// Longest gateway token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 1024;

/// The gateway token: 1 to [`MAX_TOKEN_LEN`] visible ASCII characters, so it is safe as a
/// header value. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Token(String);

impl Token {
    /// The token's text, surrounding whitespace (a file's final newline) removed.
    ///
    /// Errors: empty, longer than [`MAX_TOKEN_LEN`], or with a character that is not
    /// visible ASCII.
    pub fn new(text: &str) -> Result<Token, ConfigError> {
        let text = text.trim();
        let valid =
            (1..=MAX_TOKEN_LEN).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(ConfigError::BadToken);
        }
        Ok(Token(text.to_owned()))
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Token {
    type Error = ConfigError;

    fn try_from(text: String) -> Result<Token, ConfigError> {
        Token::new(&text)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where the gateway token came from, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `gateway_token` in the plugin configuration.
    Configuration,
    /// The environment variable of that name.
    Environment(String),
    /// Nowhere: calls to the pool-manager carry no token.
    None,
}

/// Allowed values of `max_request_bytes`.
pub const MAX_REQUEST_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=(1 << 30);

impl Default for Config {
    fn default() -> Self {
        Config {
            pool_manager_cluster: "pool_manager".to_owned(),
            pool_manager_authority: "pool-manager".to_owned(),
            route_timeout_ms: 70_000,
            usage_report_ms: 1_000,
            table_refresh_ms: 200,
            table_wait_ms: 10_000,
            max_request_bytes: 32 << 20,
            gateway_token: None,
            gateway_token_env: DEFAULT_TOKEN_ENV.to_owned(),
            bodies_while_paused: true,
            replica_header: true,
        }
    }
}

/// Default of `gateway_token_env`.
pub const DEFAULT_TOKEN_ENV: &str = "MM_GATEWAY_TOKEN";

impl Config {
    /// Parses and checks the plugin configuration. `None`, empty or all-whitespace bytes
    /// give [`Config::default`].
    ///
    /// Errors: not a JSON object of the known keys with the right types
    /// ([`ConfigError::Json`]), an empty or non-printable cluster or authority, or a timeout
    /// outside 1..=[`MAX_ROUTE_TIMEOUT_MS`], a report period outside
    /// [`USAGE_REPORT_MS_RANGE`], a refresh period outside [`TABLE_REFRESH_MS_RANGE`], or a
    /// table wait outside [`TABLE_WAIT_MS_RANGE`].
    pub fn from_bytes(bytes: Option<&[u8]>) -> Result<Config, ConfigError> {
        let bytes = bytes.unwrap_or_default();
        let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
            return Ok(Config::default());
        };
        // serde would also accept a JSON array as a struct; only an object is meant.
        if *first != b'{' {
            return Err(ConfigError::Json("expected a JSON object".to_owned()));
        }
        let config: Config =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// Takes the gateway token from the environment (`env` looks a variable up) unless the
    /// configuration has one; returns where it came from. An unset or empty variable means
    /// no token.
    ///
    /// Errors: the variable holds something that is not a valid [`Token`].
    pub fn resolve_token(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<TokenSource, ConfigError> {
        if self.gateway_token.is_some() {
            return Ok(TokenSource::Configuration);
        }
        match env(&self.gateway_token_env) {
            Some(value) if !value.trim().is_empty() => {
                self.gateway_token = Some(Token::new(&value)?);
                Ok(TokenSource::Environment(self.gateway_token_env.clone()))
            }
            _ => Ok(TokenSource::None),
        }
    }

    /// The route-call timeout as a [`Duration`].
    pub fn route_timeout(&self) -> Duration {
        Duration::from_millis(self.route_timeout_ms)
    }

    /// The usage report period as a [`Duration`].
    pub fn usage_report_period(&self) -> Duration {
        Duration::from_millis(self.usage_report_ms)
    }

    /// Timeout of one usage report call: the report period, at most
    /// [`MAX_USAGE_REPORT_TIMEOUT`].
    pub fn usage_report_timeout(&self) -> Duration {
        self.usage_report_period().min(MAX_USAGE_REPORT_TIMEOUT)
    }

    /// The table refresh period as a [`Duration`].
    pub fn table_refresh_period(&self) -> Duration {
        Duration::from_millis(self.table_refresh_ms)
    }

    /// The root context's tick: the shorter of the table refresh and usage report periods
    /// (each task runs when its own period has passed).
    pub fn tick_period(&self) -> Duration {
        self.table_refresh_period().min(self.usage_report_period())
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !is_header_token(&self.pool_manager_cluster) {
            return Err(ConfigError::BadCluster);
        }
        if !is_header_token(&self.pool_manager_authority) {
            return Err(ConfigError::BadAuthority);
        }
        if !(1..=MAX_ROUTE_TIMEOUT_MS).contains(&self.route_timeout_ms) {
            return Err(ConfigError::TimeoutOutOfRange(self.route_timeout_ms));
        }
        if !USAGE_REPORT_MS_RANGE.contains(&self.usage_report_ms) {
            return Err(ConfigError::ReportPeriodOutOfRange(self.usage_report_ms));
        }
        if !TABLE_REFRESH_MS_RANGE.contains(&self.table_refresh_ms) {
            return Err(ConfigError::RefreshPeriodOutOfRange(self.table_refresh_ms));
        }
        if !TABLE_WAIT_MS_RANGE.contains(&self.table_wait_ms) {
            return Err(ConfigError::TableWaitOutOfRange(self.table_wait_ms));
        }
        if !MAX_REQUEST_BYTES_RANGE.contains(&self.max_request_bytes) {
            return Err(ConfigError::MaxRequestBytesOutOfRange(
                self.max_request_bytes,
            ));
        }
        if !is_env_name(&self.gateway_token_env) {
            return Err(ConfigError::BadTokenEnv);
        }
        Ok(())
    }
}

/// Non-empty printable ASCII with no spaces: safe as a cluster name and as a header value.
fn is_header_token(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic())
}

/// A portable environment variable name: letters, digits and `_`, not starting with a
/// digit, 1 to 256 bytes.
fn is_env_name(name: &str) -> bool {
    (1..=256).contains(&name.len())
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Why the plugin configuration was refused; the glue logs it and fails `on_configure`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The bytes are not a JSON object of the known keys with the right types; holds
    /// serde_json's description (which names the bad key or type).
    #[error("invalid plugin configuration: {0}")]
    Json(String),
    /// `pool_manager_cluster` is empty or has spaces or non-printable characters.
    #[error("invalid plugin configuration: pool_manager_cluster must be non-empty printable ASCII without spaces")]
    BadCluster,
    /// `pool_manager_authority` is empty or has spaces or non-printable characters.
    #[error("invalid plugin configuration: pool_manager_authority must be non-empty printable ASCII without spaces")]
    BadAuthority,
    /// `route_timeout_ms` is 0 or above [`MAX_ROUTE_TIMEOUT_MS`].
    #[error("invalid plugin configuration: route_timeout_ms is {0}, expected 1 to {MAX_ROUTE_TIMEOUT_MS}")]
    TimeoutOutOfRange(u64),
    /// `usage_report_ms` is outside [`USAGE_REPORT_MS_RANGE`].
    #[error("invalid plugin configuration: usage_report_ms is {0}, expected {min} to {max}", min = USAGE_REPORT_MS_RANGE.start(), max = USAGE_REPORT_MS_RANGE.end())]
    ReportPeriodOutOfRange(u64),
    /// `table_refresh_ms` is outside [`TABLE_REFRESH_MS_RANGE`].
    #[error("invalid plugin configuration: table_refresh_ms is {0}, expected {min} to {max}", min = TABLE_REFRESH_MS_RANGE.start(), max = TABLE_REFRESH_MS_RANGE.end())]
    RefreshPeriodOutOfRange(u64),
    /// `table_wait_ms` is outside [`TABLE_WAIT_MS_RANGE`].
    #[error("invalid plugin configuration: table_wait_ms is {0}, expected {min} to {max}", min = TABLE_WAIT_MS_RANGE.start(), max = TABLE_WAIT_MS_RANGE.end())]
    TableWaitOutOfRange(u64),
    /// `max_request_bytes` is outside [`MAX_REQUEST_BYTES_RANGE`].
    #[error("invalid plugin configuration: max_request_bytes is {0}, expected {min} to {max}", min = MAX_REQUEST_BYTES_RANGE.start(), max = MAX_REQUEST_BYTES_RANGE.end())]
    MaxRequestBytesOutOfRange(u64),
    /// The gateway token (from the configuration or the environment) is empty, too long,
    /// or has a character that is not visible ASCII. The message never shows it.
    #[error("invalid gateway token: expected 1 to {MAX_TOKEN_LEN} visible ASCII characters")]
    BadToken,
    /// `gateway_token_env` is not an environment variable name.
    #[error("invalid plugin configuration: gateway_token_env must be a variable name (letters, digits, '_')")]
    BadTokenEnv,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_or_empty_configuration_gives_defaults() {
        for bytes in [None, Some(&b""[..]), Some(b"  \n"), Some(b"{}")] {
            assert_eq!(
                Config::from_bytes(bytes),
                Ok(Config::default()),
                "{bytes:?}"
            );
        }
        let config = Config::default();
        assert_eq!(config.pool_manager_cluster, "pool_manager");
        assert_eq!(config.pool_manager_authority, "pool-manager");
        assert_eq!(config.route_timeout(), Duration::from_secs(70));
        assert_eq!(config.usage_report_ms, 1_000);
        assert_eq!(config.usage_report_period(), Duration::from_secs(1));
        assert_eq!(config.usage_report_timeout(), Duration::from_secs(1));
        assert_eq!(config.table_refresh_ms, 200);
        assert_eq!(config.table_wait_ms, 10_000);
        assert_eq!(config.max_request_bytes, 32 << 20);
        assert_eq!(config.tick_period(), Duration::from_millis(200));
        assert_eq!(config.gateway_token, None);
        assert_eq!(config.gateway_token_env, "MM_GATEWAY_TOKEN");
        assert!(config.bodies_while_paused);
    }

    #[test]
    fn the_token_comes_from_the_configuration_else_the_environment() {
        let env = |name: &str| match name {
            "MM_GATEWAY_TOKEN" => Some("from-env\n".to_owned()),
            "EMPTY" => Some("  ".to_owned()),
            "BAD" => Some("two words".to_owned()),
            _ => None,
        };
        let mut config = Config::default();
        assert_eq!(
            config.resolve_token(env),
            Ok(TokenSource::Environment("MM_GATEWAY_TOKEN".into()))
        );
        assert_eq!(
            config.gateway_token.as_ref().map(Token::as_str),
            Some("from-env")
        );

        let mut config = Config::from_bytes(Some(br#"{"gateway_token":"from-config"}"#)).unwrap();
        assert_eq!(config.resolve_token(env), Ok(TokenSource::Configuration));
        assert_eq!(
            config.gateway_token.as_ref().map(Token::as_str),
            Some("from-config")
        );

        for (name, want) in [
            ("UNSET", Ok(TokenSource::None)),
            ("EMPTY", Ok(TokenSource::None)),
            ("BAD", Err(ConfigError::BadToken)),
        ] {
            let json = format!(r#"{{"gateway_token_env":"{name}"}}"#);
            let mut config = Config::from_bytes(Some(json.as_bytes())).unwrap();
            assert_eq!(config.resolve_token(env), want, "{name}");
            assert_eq!(config.gateway_token, None);
        }
    }

    #[test]
    fn refuses_bad_tokens_without_showing_them() {
        for bad in [
            r#"{"gateway_token":""}"#.to_owned(),
            r#"{"gateway_token":"a b"}"#.to_owned(),
            r#"{"gateway_token":"caf\u00e9"}"#.to_owned(),
            format!(r#"{{"gateway_token":"{}"}}"#, "x".repeat(MAX_TOKEN_LEN + 1)),
        ] {
            let err = Config::from_bytes(Some(bad.as_bytes())).unwrap_err();
            assert!(
                err.to_string().contains("invalid gateway token"),
                "{bad}: {err}"
            );
        }
        let config = Config::from_bytes(Some(br#"{"gateway_token":"hunter2"}"#)).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
        for bad in ["", "1ABC", "A-B", "A B"] {
            let json = format!(r#"{{"gateway_token_env":"{bad}"}}"#);
            assert_eq!(
                Config::from_bytes(Some(json.as_bytes())),
                Err(ConfigError::BadTokenEnv),
                "{bad}"
            );
        }
    }

    #[test]
    fn reads_every_key() {
        let json = br#"{"pool_manager_cluster":"pm","pool_manager_authority":"pm.local:9000","route_timeout_ms":1,"usage_report_ms":250,"table_refresh_ms":50,"table_wait_ms":30000,"max_request_bytes":4096,"gateway_token":"t0k3n","gateway_token_env":"PM_TOKEN","bodies_while_paused":false,"replica_header":false}"#;
        assert_eq!(
            Config::from_bytes(Some(json)),
            Ok(Config {
                pool_manager_cluster: "pm".into(),
                pool_manager_authority: "pm.local:9000".into(),
                route_timeout_ms: 1,
                usage_report_ms: 250,
                table_refresh_ms: 50,
                table_wait_ms: 30_000,
                max_request_bytes: 4096,
                gateway_token: Some(Token::new("t0k3n").unwrap()),
                gateway_token_env: "PM_TOKEN".into(),
                bodies_while_paused: false,
                replica_header: false,
            })
        );
        for bad in [
            br#"{"max_request_bytes":1023}"#.as_slice(),
            br#"{"max_request_bytes":1073741825}"#,
        ] {
            assert!(matches!(
                Config::from_bytes(Some(bad)),
                Err(ConfigError::MaxRequestBytesOutOfRange(_))
            ));
        }
        let partial = br#"{"route_timeout_ms":600000}"#;
        let config = Config::from_bytes(Some(partial)).unwrap();
        assert_eq!(config.route_timeout_ms, MAX_ROUTE_TIMEOUT_MS);
        assert_eq!(config.pool_manager_cluster, "pool_manager");
        assert_eq!(config.usage_report_ms, 1_000);
    }

    #[test]
    fn usage_report_period_bounds_and_timeout() {
        for (ms, timeout) in [(100, 100), (1_000, 1_000), (5_000, 5_000), (60_000, 5_000)] {
            let json = format!(r#"{{"usage_report_ms":{ms}}}"#);
            let config = Config::from_bytes(Some(json.as_bytes())).unwrap();
            assert_eq!(config.usage_report_period(), Duration::from_millis(ms));
            assert_eq!(
                config.usage_report_timeout(),
                Duration::from_millis(timeout)
            );
        }
        for ms in [0, 99, 60_001, u64::MAX] {
            let json = format!(r#"{{"usage_report_ms":{ms}}}"#);
            assert_eq!(
                Config::from_bytes(Some(json.as_bytes())),
                Err(ConfigError::ReportPeriodOutOfRange(ms)),
                "{ms}"
            );
        }
        for json in [
            &br#"{"usage_report_ms":"1000"}"#[..],
            br#"{"usage_report_ms":-1}"#,
            br#"{"usage_report_ms":1000.5}"#,
            br#"{"usage_report_ms":null}"#,
        ] {
            let err = Config::from_bytes(Some(json)).unwrap_err();
            assert!(matches!(err, ConfigError::Json(_)), "{err:?}");
        }
    }

    #[test]
    fn table_refresh_and_wait_bounds() {
        for (refresh, report, tick) in [(50, 1_000, 50), (10_000, 1_000, 1_000), (200, 100, 100)] {
            let json = format!(r#"{{"table_refresh_ms":{refresh},"usage_report_ms":{report}}}"#);
            let config = Config::from_bytes(Some(json.as_bytes())).unwrap();
            assert_eq!(
                config.table_refresh_period(),
                Duration::from_millis(refresh)
            );
            assert_eq!(config.tick_period(), Duration::from_millis(tick));
        }
        for ms in [0, 49, 10_001, u64::MAX] {
            let json = format!(r#"{{"table_refresh_ms":{ms}}}"#);
            assert_eq!(
                Config::from_bytes(Some(json.as_bytes())),
                Err(ConfigError::RefreshPeriodOutOfRange(ms)),
                "{ms}"
            );
        }
        for ms in [100, 30_000] {
            let json = format!(r#"{{"table_wait_ms":{ms}}}"#);
            assert_eq!(
                Config::from_bytes(Some(json.as_bytes())).map(|c| c.table_wait_ms),
                Ok(ms)
            );
        }
        for ms in [0, 99, 30_001, u64::MAX] {
            let json = format!(r#"{{"table_wait_ms":{ms}}}"#);
            assert_eq!(
                Config::from_bytes(Some(json.as_bytes())),
                Err(ConfigError::TableWaitOutOfRange(ms)),
                "{ms}"
            );
        }
        for json in [
            &br#"{"table_refresh_ms":"200"}"#[..],
            br#"{"table_wait_ms":-1}"#,
            br#"{"table_wait_ms":null}"#,
            br#"{"table_refresh":200}"#,
        ] {
            let err = Config::from_bytes(Some(json)).unwrap_err();
            assert!(matches!(err, ConfigError::Json(_)), "{err:?}");
        }
    }

    #[test]
    fn refuses_bad_configuration() {
        // `None`: any JSON error; `Some(e)`: exactly `e`.
        let cases: &[(&[u8], Option<ConfigError>)] = &[
            (br#"{"route_timeout_ms":"70"}"#, None),
            (br#"{"route_timeout_ms":-1}"#, None),
            (br#"{"route_timeout_ms":1.5}"#, None),
            (b"null", None),
            (b"[]", None),
            (b"{", None),
            (b"\xff", None),
            (
                br#"{"route_timeout_ms":0}"#,
                Some(ConfigError::TimeoutOutOfRange(0)),
            ),
            (
                br#"{"route_timeout_ms":600001}"#,
                Some(ConfigError::TimeoutOutOfRange(600_001)),
            ),
            (
                br#"{"pool_manager_cluster":""}"#,
                Some(ConfigError::BadCluster),
            ),
            (
                br#"{"pool_manager_cluster":"a b"}"#,
                Some(ConfigError::BadCluster),
            ),
            (
                br#"{"pool_manager_authority":""}"#,
                Some(ConfigError::BadAuthority),
            ),
            (
                br#"{"pool_manager_authority":"a\r\nx-mm-evil: 1"}"#,
                Some(ConfigError::BadAuthority),
            ),
        ];
        for (bytes, expected) in cases {
            let err = Config::from_bytes(Some(bytes)).unwrap_err();
            let input = String::from_utf8_lossy(bytes);
            match expected {
                Some(expected) => assert_eq!(&err, expected, "{input}"),
                None => assert!(matches!(err, ConfigError::Json(_)), "{input} -> {err:?}"),
            }
            assert!(err
                .to_string()
                .starts_with("invalid plugin configuration: "));
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_bytes(Some(br#"{"pool_manager_clustr":"x"}"#)).unwrap_err();
        assert!(err.to_string().contains("pool_manager_clustr"), "{err}");
    }

    #[test]
    fn messages_name_the_key() {
        assert_eq!(
            ConfigError::TimeoutOutOfRange(0).to_string(),
            "invalid plugin configuration: route_timeout_ms is 0, expected 1 to 600000"
        );
        assert_eq!(
            ConfigError::ReportPeriodOutOfRange(50).to_string(),
            "invalid plugin configuration: usage_report_ms is 50, expected 100 to 60000"
        );
        assert_eq!(
            ConfigError::RefreshPeriodOutOfRange(1).to_string(),
            "invalid plugin configuration: table_refresh_ms is 1, expected 50 to 10000"
        );
        assert_eq!(
            ConfigError::TableWaitOutOfRange(1).to_string(),
            "invalid plugin configuration: table_wait_ms is 1, expected 100 to 30000"
        );
        assert!(ConfigError::BadCluster
            .to_string()
            .contains("pool_manager_cluster"));
    }
}
