//! Request classification: turns a client request's `:path` into the model it names, or into
//! "any ready replica" for the server-level health paths, and refuses everything else. Only
//! the inference paths listed on [`parse`] are routable; Triton's repository API
//! (`/v2/repository/...`, which loads and unloads models) never is.

use mm_wire::{validate_model_name, NameError, ANY_REPLICA_PATH, ROUTE_PATH_PREFIX};

/// Most digits a model version may have: any `u64`-sized number fits, and nothing longer
/// reaches Triton.
pub const MAX_VERSION_DIGITS: usize = 19;

/// Response header that tells operators (and tests) which replica served a request.
pub const REPLICA_HEADER: &str = "x-mm-replica";

/// Response header naming the model that served a request, on requests renamed to a
/// Triton-side name (a model served by a version loaded by an update), whose body's
/// `model_name` is that Triton-side name.
pub const SERVED_MODEL_HEADER: &str = "x-mm-served-model";

/// Response header with the Triton-side name of the version that served a renamed request.
pub const SERVED_VERSION_HEADER: &str = "x-mm-served-version";

/// Header that would let a client pick the upstream address of an ORIGINAL_DST cluster.
pub const ORIGINAL_DST_HEADER: &str = "x-envoy-original-dst-host";

/// Prefix of the gateway's own headers; a client must not be able to send them.
const RESERVED_HEADER_PREFIX: &str = "x-mm-";

/// Longest path that can match a route: 6 segments. Splitting stops there, so a path with
/// many slashes costs no more than a short one.
const MAX_SEGMENTS: usize = 6;

/// Which per-model endpoint a request calls. The filter routes them all the same way; the
/// kind is kept for logs and for any per-endpoint treatment later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelApi {
    /// `GET /v2/models/{name}[/versions/{v}]`
    V2Metadata,
    /// `GET /v2/models/{name}[/versions/{v}]/ready`
    V2Ready,
    /// `POST /v2/models/{name}[/versions/{v}]/infer`
    V2Infer,
    /// `POST /v2/models/{name}[/versions/{v}]/generate`
    V2Generate,
    /// `POST /v2/models/{name}[/versions/{v}]/generate_stream`
    V2GenerateStream,
    /// `GET /v2/models/{name}[/versions/{v}]/config` (Triton's model configuration, which
    /// `tritonclient.http` reads with `get_model_config`)
    V2Config,
    /// `POST /v1/models/{name}:predict` (KServe V1)
    V1Predict,
    /// `GET /v1/models/{name}` (KServe V1)
    V1Metadata,
}

/// Where a request has to go, as far as the path tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The request names a model: it must reach a replica that has `name` loaded.
    Model {
        /// A name that passed [`validate_model_name`].
        name: String,
        /// 1 to [`MAX_VERSION_DIGITS`] ASCII digits, when the path names a version.
        version: Option<String>,
        /// The endpoint called.
        kind: ModelApi,
    },
    /// A server-level request (`/v2`, `/v2/health/live`, `/v2/health/ready`): any ready
    /// replica can answer it.
    Server,
}

impl Route {
    /// The model the request names, if any (for logs).
    pub fn model(&self) -> Option<&str> {
        match self {
            Route::Model { name, .. } => Some(name),
            Route::Server => None,
        }
    }

    /// The `:path` of the pool-manager call that resolves this route:
    /// `{ROUTE_PATH_PREFIX}{name}` for a model, [`ANY_REPLICA_PATH`] for the server.
    /// The name is safe as a path segment because [`parse`] validated it.
    pub fn pool_manager_path(&self) -> String {
        pool_manager_path_for(self.model())
    }
}

/// The `:path` of the route call for `model` (`{ROUTE_PATH_PREFIX}{model}`), or for any
/// ready replica ([`ANY_REPLICA_PATH`]) when `None`. The model must have passed
/// [`validate_model_name`], which makes it safe as a path segment.
pub fn pool_manager_path_for(model: Option<&str>) -> String {
    match model {
        Some(name) => format!("{ROUTE_PATH_PREFIX}{name}"),
        None => ANY_REPLICA_PATH.to_owned(),
    }
}

/// Why a path was refused. [`RouteError::status`] gives the HTTP status to answer with and
/// `Display` the one-sentence message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path (before any `?`) is not valid UTF-8. 400.
    #[error("request path is not valid UTF-8")]
    NotUtf8,
    /// The path has the shape of a model route but the model segment is not a valid name
    /// (empty, `..`, `%`-encoded, non-ASCII, ...). 400.
    #[error("invalid model name in request path: {0}")]
    InvalidModelName(#[source] NameError),
    /// The path names a version that is not 1 to [`MAX_VERSION_DIGITS`] ASCII digits. 400.
    #[error(
        "invalid model version in request path: expected 1 to {MAX_VERSION_DIGITS} ASCII digits"
    )]
    InvalidVersion,
    /// The path is not one the gateway serves (unknown, trailing slash, repository API,
    /// statistics, `:explain`, metrics, ...). 404.
    #[error("no route for this path")]
    NoRoute,
}

impl RouteError {
    /// The HTTP status the gateway answers with.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::NotUtf8 | RouteError::InvalidModelName(_) | RouteError::InvalidVersion => {
                400
            }
            RouteError::NoRoute => 404,
        }
    }
}

/// Classifies a request path (the raw `:path` bytes, which may carry a `?query`).
///
/// Routable paths, matched segment by segment with no decoding or normalisation:
/// - `/v2`, `/v2/health/live`, `/v2/health/ready` -> [`Route::Server`]
/// - `/v2/models/{name}[/versions/{v}]` and the same followed by `/ready`, `/infer`,
///   `/generate`, `/generate_stream` or `/config` -> [`Route::Model`]
/// - `/v1/models/{name}` and `/v1/models/{name}:predict` -> [`Route::Model`]
///
/// `/v2/models/stats` is refused: Triton reads it as the statistics of every model. The
/// query is ignored. The shape is checked before the name and version, so an unknown
/// path is a 404 whatever its segments hold; on a known shape, a bad name or version is a
/// 400. Never panics, whatever the input.
pub fn parse(path: &[u8]) -> Result<Route, RouteError> {
    let path = match path.iter().position(|&b| b == b'?') {
        Some(end) => path.get(..end).unwrap_or_default(),
        None => path,
    };
    let path = std::str::from_utf8(path).map_err(|_| RouteError::NotUtf8)?;
    let rest = path.strip_prefix('/').ok_or(RouteError::NoRoute)?;
    // On the stack: this runs for every request, and a `Vec` was one of its allocations.
    let mut segments = [""; MAX_SEGMENTS + 1];
    let count = split_segments(rest, &mut segments);

    match segments.get(..count).unwrap_or_default() {
        ["v2"] | ["v2", "health", "live"] | ["v2", "health", "ready"] => Ok(Route::Server),
        // Triton answers `/v2/models/stats` with every model's statistics, not with the
        // metadata of a model named "stats": it would reveal the whole repository.
        ["v2", "models", "stats"] => Err(RouteError::NoRoute),
        ["v2", "models", name] => model(name, None, ModelApi::V2Metadata),
        ["v2", "models", name, action] => model(name, None, v2_action(action)?),
        ["v2", "models", name, "versions", version] => {
            model(name, Some(version), ModelApi::V2Metadata)
        }
        ["v2", "models", name, "versions", version, action] => {
            model(name, Some(version), v2_action(action)?)
        }
        ["v1", "models", target] => match target.split_once(':') {
            None => model(target, None, ModelApi::V1Metadata),
            Some((name, "predict")) => model(name, None, ModelApi::V1Predict),
            Some(_) => Err(RouteError::NoRoute),
        },
        _ => Err(RouteError::NoRoute),
    }
}

/// Splits `path` at `/` into `out` as `str::splitn(out.len(), '/')` would (the last slot
/// takes the rest); returns how many slots it filled. A scan of bytes: `/` is ASCII, so
/// every cut is a character boundary, and for a path's few short segments this costs a
/// fraction of `splitn`'s general pattern search (it runs on every request).
fn split_segments<'a>(path: &'a str, out: &mut [&'a str]) -> usize {
    let Some(last) = out.len().checked_sub(1) else {
        return 0;
    };
    let (mut count, mut start) = (0, 0);
    for (i, byte) in path.bytes().enumerate() {
        if byte == b'/' && count < last {
            if let Some(slot) = out.get_mut(count) {
                *slot = path.get(start..i).unwrap_or_default();
            }
            count += 1;
            start = i + 1;
        }
    }
    if let Some(slot) = out.get_mut(count) {
        *slot = path.get(start..).unwrap_or_default();
    }
    count + 1
}

/// Whether a request header is one only the gateway may set: a client that sends it is
/// trying to steer routing (`x-envoy-original-dst-host`) or to impersonate the gateway
/// (`x-mm-*`). Names are compared case-insensitively, as bytes: every request header name
/// is checked, and none needs to be UTF-8 to be told apart from these ASCII ones.
pub fn is_reserved_header(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(ORIGINAL_DST_HEADER.as_bytes())
        || name
            .get(..RESERVED_HEADER_PREFIX.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(RESERVED_HEADER_PREFIX.as_bytes()))
}

/// The per-model endpoint named by the last segment of a V2 model path.
fn v2_action(action: &str) -> Result<ModelApi, RouteError> {
    match action {
        "ready" => Ok(ModelApi::V2Ready),
        "infer" => Ok(ModelApi::V2Infer),
        "generate" => Ok(ModelApi::V2Generate),
        "generate_stream" => Ok(ModelApi::V2GenerateStream),
        "config" => Ok(ModelApi::V2Config),
        _ => Err(RouteError::NoRoute),
    }
}

/// Builds a model route once the shape is known, validating the name then the version.
fn model(name: &str, version: Option<&str>, kind: ModelApi) -> Result<Route, RouteError> {
    validate_model_name(name).map_err(RouteError::InvalidModelName)?;
    if let Some(version) = version {
        if !is_valid_version(version) {
            return Err(RouteError::InvalidVersion);
        }
    }
    Ok(Route::Model {
        name: name.to_owned(),
        version: version.map(str::to_owned),
        kind,
    })
}

/// A version is 1 to [`MAX_VERSION_DIGITS`] ASCII digits (Triton versions are integers).
fn is_valid_version(version: &str) -> bool {
    (1..=MAX_VERSION_DIGITS).contains(&version.len()) && version.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(name: &str, version: Option<&str>, kind: ModelApi) -> Result<Route, RouteError> {
        Ok(Route::Model {
            name: name.to_owned(),
            version: version.map(str::to_owned),
            kind,
        })
    }

    #[test]
    fn routes_v2_model_paths() {
        use ModelApi::*;
        let cases: &[(&str, Result<Route, RouteError>)] = &[
            ("/v2/models/linear", m("linear", None, V2Metadata)),
            ("/v2/models/linear/ready", m("linear", None, V2Ready)),
            ("/v2/models/linear/infer", m("linear", None, V2Infer)),
            ("/v2/models/llm/generate", m("llm", None, V2Generate)),
            (
                "/v2/models/llm/generate_stream",
                m("llm", None, V2GenerateStream),
            ),
            (
                "/v2/models/fraud-model.v3",
                m("fraud-model.v3", None, V2Metadata),
            ),
            ("/v2/models/stats/infer", m("stats", None, V2Infer)),
            (
                "/v2/models/mlp_2/versions/1",
                m("mlp_2", Some("1"), V2Metadata),
            ),
            (
                "/v2/models/mlp_2/versions/0/ready",
                m("mlp_2", Some("0"), V2Ready),
            ),
            (
                "/v2/models/mlp_2/versions/42/infer",
                m("mlp_2", Some("42"), V2Infer),
            ),
            (
                "/v2/models/x/versions/3/generate",
                m("x", Some("3"), V2Generate),
            ),
            (
                "/v2/models/x/versions/3/generate_stream",
                m("x", Some("3"), V2GenerateStream),
            ),
            ("/v2/models/linear/config", m("linear", None, V2Config)),
            (
                "/v2/models/mlp_2/versions/2/config",
                m("mlp_2", Some("2"), V2Config),
            ),
            (
                "/v2/models/x/versions/9223372036854775807/infer",
                m("x", Some("9223372036854775807"), V2Infer),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(&parse(path.as_bytes()), want, "{path}");
        }
    }

    #[test]
    fn routes_v1_model_paths() {
        use ModelApi::*;
        let cases: &[(&str, Result<Route, RouteError>)] = &[
            ("/v1/models/linear", m("linear", None, V1Metadata)),
            ("/v1/models/linear:predict", m("linear", None, V1Predict)),
            ("/v1/models/a.b-c_d:predict", m("a.b-c_d", None, V1Predict)),
            ("/v1/models/x:explain", Err(RouteError::NoRoute)),
            ("/v1/models/x:predict:predict", Err(RouteError::NoRoute)),
            ("/v1/models/x:", Err(RouteError::NoRoute)),
            ("/v1/models/x/", Err(RouteError::NoRoute)),
            ("/v1/models", Err(RouteError::NoRoute)),
            (
                "/v1/models/:predict",
                Err(RouteError::InvalidModelName(NameError::Empty)),
            ),
            (
                "/v1/models/..:predict",
                Err(RouteError::InvalidModelName(NameError::BadStart)),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(&parse(path.as_bytes()), want, "{path}");
        }
    }

    #[test]
    fn routes_server_paths_to_any_replica() {
        for path in [
            "/v2",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/health/ready?x=1",
        ] {
            assert_eq!(parse(path.as_bytes()), Ok(Route::Server), "{path}");
        }
    }

    #[test]
    fn ignores_the_query_string() {
        assert_eq!(
            parse(b"/v2/models/linear/infer?timeout=5&x=/v2/repository"),
            m("linear", None, ModelApi::V2Infer)
        );
        assert_eq!(
            parse(b"/v2/models/linear?"),
            m("linear", None, ModelApi::V2Metadata)
        );
        // A non-UTF-8 query does not matter: only the path is read.
        assert_eq!(parse(b"/v2?\xff"), Ok(Route::Server));
        assert_eq!(parse(b"/v2/repository/index?x"), Err(RouteError::NoRoute));
    }

    #[test]
    fn refuses_unknown_paths_with_404() {
        let paths = [
            "",
            "/",
            "*",
            "v2/models/x",
            "//v2/models/x",
            "/v2/",
            "/v2/health",
            "/v2/health/",
            "/v2/health/live/",
            "/v2/health/startup",
            "/V2/models/x",
            "/v2/Models/x",
            "/v2/models",
            "/v2/models/x/",
            "/v2/models/x/infer/",
            "/v2/models/x/versions",
            "/v2/models/x/versions/1/",
            "/v2/models/x/versions/1/stats",
            "/v2/models/x/stats",
            "/v2/models/x/trace/setting",
            "/v2/models/x/INFER",
            "/v2/models/x/infer/extra/segments/here",
            "/v2/models/stats",
            "/v2/models/stats?x=1",
            "/v2/repository/index",
            "/v2/repository/models/x/load",
            "/v2/repository/models/x/unload",
            "/v2/repository/models/../load",
            "/v2/repositor%79/models/x/load",
            "/v2/trace/setting",
            "/v2/logging",
            "/v2/systemsharedmemory/status",
            "/v2/cudasharedmemory/region/x/register",
            "/v1/models/x:explain",
            "/v1/x",
            "/metrics",
            "/internal/v1/route/x",
            "/admin",
            "/v2/models/x/versions/1/infer/more",
        ];
        for path in paths {
            assert_eq!(parse(path.as_bytes()), Err(RouteError::NoRoute), "{path}");
            assert_eq!(RouteError::NoRoute.status(), 404);
        }
    }

    #[test]
    fn refuses_bad_model_names_with_400() {
        let cases: &[(&str, NameError)] = &[
            ("/v2/models/", NameError::Empty),
            ("/v2/models//infer", NameError::Empty),
            ("/v2/models//versions/1/infer", NameError::Empty),
            ("/v2/models/../infer", NameError::BadStart),
            ("/v2/models/..", NameError::BadStart),
            ("/v2/models/.", NameError::BadStart),
            ("/v2/models/.hidden/ready", NameError::BadStart),
            ("/v2/models/-x/infer", NameError::BadStart),
            ("/v2/models/%2e%2e/infer", NameError::BadStart),
            ("/v2/models/a%2fb/infer", NameError::BadChar),
            ("/v2/models/a b/infer", NameError::BadChar),
            ("/v2/models/mod\u{e8}le/infer", NameError::BadChar),
            ("/v2/models/a\\b/infer", NameError::BadChar),
            ("/v2/models/a:b/infer", NameError::BadChar),
            ("/v2/models/a#b/infer", NameError::BadChar),
            ("/v1/models/a%3Apredict", NameError::BadChar),
        ];
        for (path, why) in cases {
            let got = parse(path.as_bytes());
            assert_eq!(
                got,
                Err(RouteError::InvalidModelName(why.clone())),
                "{path}"
            );
            assert_eq!(got.err().map(|e| e.status()), Some(400), "{path}");
        }
        let long = format!("/v2/models/{}/infer", "a".repeat(129));
        assert_eq!(
            parse(long.as_bytes()),
            Err(RouteError::InvalidModelName(NameError::TooLong))
        );
        let longest = format!("/v2/models/{}/infer", "a".repeat(128));
        assert!(parse(longest.as_bytes()).is_ok());
    }

    #[test]
    fn refuses_bad_versions_with_400() {
        for version in [
            "",
            "a",
            "1a",
            "-1",
            "+1",
            " 1",
            "1.0",
            "%31",
            "12345678901234567890",
        ] {
            let path = format!("/v2/models/x/versions/{version}/infer");
            assert_eq!(
                parse(path.as_bytes()),
                Err(RouteError::InvalidVersion),
                "{path}"
            );
            let path = format!("/v2/models/x/versions/{version}");
            assert_eq!(
                parse(path.as_bytes()),
                Err(RouteError::InvalidVersion),
                "{path}"
            );
        }
        assert_eq!(RouteError::InvalidVersion.status(), 400);
    }

    #[test]
    fn checks_the_name_before_the_version() {
        assert_eq!(
            parse(b"/v2/models/../versions/x/infer"),
            Err(RouteError::InvalidModelName(NameError::BadStart))
        );
    }

    #[test]
    fn refuses_non_utf8_paths_with_400() {
        for path in [
            &b"/v2/models/\xff/infer"[..],
            b"/v2/models/mod\xc3le",
            b"/\x80",
            b"/v2/repository/\xfe/load",
        ] {
            assert_eq!(parse(path), Err(RouteError::NotUtf8), "{path:?}");
        }
        assert_eq!(RouteError::NotUtf8.status(), 400);
    }

    #[test]
    fn messages_say_what_was_wrong() {
        assert_eq!(RouteError::NoRoute.to_string(), "no route for this path");
        assert_eq!(
            RouteError::NotUtf8.to_string(),
            "request path is not valid UTF-8"
        );
        assert_eq!(
            RouteError::InvalidModelName(NameError::Empty).to_string(),
            "invalid model name in request path: model name is empty"
        );
        assert_eq!(
            RouteError::InvalidVersion.to_string(),
            "invalid model version in request path: expected 1 to 19 ASCII digits"
        );
    }

    #[test]
    fn pool_manager_path_names_the_model() {
        let route = parse(b"/v2/models/linear/versions/2/infer").unwrap();
        assert_eq!(route.pool_manager_path(), "/internal/v1/route/linear");
        assert_eq!(route.model(), Some("linear"));
        assert_eq!(Route::Server.pool_manager_path(), "/internal/v1/route");
        assert_eq!(Route::Server.model(), None);
        assert_eq!(pool_manager_path_for(Some("m")), "/internal/v1/route/m");
        assert_eq!(pool_manager_path_for(None), "/internal/v1/route");
    }

    #[test]
    fn segments_split_as_splitn_does() {
        for path in [
            "",
            "/",
            "a",
            "a/b",
            "v2/models/m/versions/1/infer",
            "a//b/",
            "x/y/z/w/v/u/t/s/r",
            "é/ü/ñ",
        ] {
            for n in 1..=8 {
                let mut out = [""; 8];
                let count = split_segments(path, &mut out[..n]);
                let want: Vec<&str> = path.splitn(n, '/').collect();
                assert_eq!(&out[..count], want.as_slice(), "{path:?} in {n}");
            }
        }
        assert_eq!(split_segments("a/b", &mut []), 0);
    }

    proptest! {
        #[test]
        fn segments_split_as_splitn_does_for_any_path(path in ".{0,40}", n in 1usize..9) {
            let mut out = [""; 8];
            let count = split_segments(&path, &mut out[..n]);
            let want: Vec<&str> = path.splitn(n, '/').collect();
            prop_assert_eq!(&out[..count], want.as_slice());
        }
    }

    #[test]
    fn reserved_headers_are_the_routing_ones() {
        for name in [
            "x-envoy-original-dst-host",
            "X-Envoy-Original-Dst-Host",
            "x-mm-replica",
            "X-MM-Anything",
            "x-mm-",
        ] {
            assert!(is_reserved_header(name.as_bytes()), "{name}");
        }
        for name in [
            "x-mm",
            "content-type",
            "x-envoy-original-path",
            "xx-mm-a",
            ":path",
            "",
        ] {
            assert!(!is_reserved_header(name.as_bytes()), "{name}");
        }
    }

    fn model_path() -> impl Strategy<Value = Vec<u8>> {
        let segment = prop_oneof![
            "[A-Za-z0-9_.-]{0,12}",
            ".{0,12}",
            Just("..".to_owned()),
            Just(String::new()),
        ];
        let action = prop_oneof![
            Just(""),
            Just("/ready"),
            Just("/infer"),
            Just("/generate"),
            Just("/generate_stream"),
            Just("/stats"),
            Just("/"),
        ];
        let version = prop_oneof![
            Just(String::new()),
            "/versions/[0-9]{0,21}".prop_map(|s| s),
            "/versions/.{0,4}".prop_map(|s| s),
        ];
        let query = prop_oneof![Just(String::new()), "\\?.{0,8}".prop_map(|s| s)];
        (
            prop_oneof![Just("/v2/models/"), Just("/v1/models/")],
            segment,
            prop_oneof![Just(""), Just(":predict"), Just(":explain")],
            version,
            action,
            query,
        )
            .prop_map(|(prefix, name, verb, version, action, query)| {
                format!("{prefix}{name}{verb}{version}{action}{query}").into_bytes()
            })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(path in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&path);
        }

        #[test]
        fn accepted_names_are_valid_and_versions_are_digits(
            path in prop_oneof![model_path(), proptest::collection::vec(any::<u8>(), 0..64)]
        ) {
            match parse(&path) {
                Ok(Route::Model { name, version, .. }) => {
                    prop_assert_eq!(validate_model_name(&name), Ok(()));
                    if let Some(version) = version {
                        prop_assert!(is_valid_version(&version));
                    }
                    let path = String::from_utf8_lossy(&path);
                    let path = path.split('?').next().unwrap_or_default();
                    prop_assert!(!path.contains("/repository"));
                }
                Ok(Route::Server) => {}
                Err(err) => {
                    prop_assert!(matches!(err.status(), 400 | 404));
                    prop_assert!(!err.to_string().is_empty());
                }
            }
        }
    }
}
