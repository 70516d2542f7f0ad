//! The admin API's OpenAPI document (`GET /api/v1/openapi.json`), generated with utoipa
//! from the handlers' own `#[utoipa::path]` descriptions and the types they answer with,
//! never written by hand; and the small answer bodies that are not pool views.

use std::sync::OnceLock;

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa::{Modify, OpenApi as _};

use crate::pool::{ModelView, ReplicaView};

/// A page of [`ModelView`]s.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelView>,
    /// The `after` of the next page; null on the last one.
    pub next: Option<String>,
}

/// What a registration answers: the model, or with `?dryRun=true` what would happen.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum PutAnswer {
    Model(Box<ModelView>),
    DryRun(DryRun),
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    pub dry_run: bool,
    /// `created`, `updated` or `unchanged`.
    pub result: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplicaList {
    pub replicas: Vec<ReplicaView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    /// The deleted model's name.
    pub deleted: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Applied {
    /// Entries of the usage report applied (the rest named unknown models or replicas).
    pub applied: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub accepted: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "mm-gateway pool-manager",
        description = "The admin API (/api/v1), the status page (/ui), health and metrics, and \
                       the internal routes the gateway's filter calls (/internal/v1). Every \
                       error is JSON {\"error\": \"...\"}."
    ),
    modifiers(&Security),
    tags(
        (name = "models", description = "Registering, reading and deleting models"),
        (name = "aliases", description = "Names that stand for models, by weight (canaries)"),
        (name = "replicas", description = "The Triton replicas of the pool"),
        (name = "operations", description = "Events, the summary, health, metrics, this document"),
        (name = "ui", description = "The status page"),
        (name = "gateway", description = "Called by the gateway's filter only"),
    )
)]
struct Base;

/// The two credentials: the admin bearer token (writes) and the gateway token (internal).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "gateway",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(
                mm_wire::GATEWAY_TOKEN_HEADER,
            ))),
        );
    }
}

/// What the routes' descriptions are added to.
pub(super) fn base() -> OpenApi {
    Base::openapi()
}

/// The whole document, made once from the same routes as the router.
pub(super) fn spec() -> &'static OpenApi {
    static SPEC: OnceLock<OpenApi> = OnceLock::new();
    SPEC.get_or_init(|| super::api().split_for_parts().1)
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations", responses(
    (status = 200, description = "the OpenAPI document", body = Object),
    (status = 403, description = "a browser request from elsewhere", body = mm_wire::ErrorBody)))]
pub(super) async fn document() -> Json<&'static OpenApi> {
    Json(spec())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt;
    use utoipa::openapi::HttpMethod;

    use super::super::tests::fixture_with;
    use super::*;

    const METHODS: [(HttpMethod, Method); 5] = [
        (HttpMethod::Get, Method::GET),
        (HttpMethod::Put, Method::PUT),
        (HttpMethod::Post, Method::POST),
        (HttpMethod::Delete, Method::DELETE),
        (HttpMethod::Patch, Method::PATCH),
    ];

    /// Every (path, method) the document lists.
    fn documented() -> Vec<(String, Method)> {
        let mut out = Vec::new();
        for (path, item) in &spec().paths.paths {
            for (http, method) in &METHODS {
                let op = match http {
                    HttpMethod::Get => &item.get,
                    HttpMethod::Put => &item.put,
                    HttpMethod::Post => &item.post,
                    HttpMethod::Delete => &item.delete,
                    HttpMethod::Patch => &item.patch,
                    _ => continue,
                };
                if op.is_some() {
                    out.push((path.clone(), method.clone()));
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn every_route_of_the_router_is_in_the_document() {
        let f = fixture_with(|_| {}).await;
        let mut seen = Vec::new();
        for path in spec().paths.paths.keys() {
            let uri = path.replace("{name}", "m");
            for (_, method) in &METHODS {
                // (A live stream's body is never read: its status is enough.)
                let request = Request::builder()
                    .method(method.clone())
                    .uri(&uri)
                    .header("content-type", "application/json");
                let response = f
                    .app
                    .clone()
                    .oneshot(request.body(Body::from("{}")).unwrap())
                    .await
                    .unwrap();
                let status = response.status();
                let served = status != StatusCode::METHOD_NOT_ALLOWED
                    && !(status == StatusCode::NOT_FOUND && is_fallback(response).await);
                if served {
                    seen.push((path.clone(), method.clone()));
                }
            }
        }
        let mut want = documented();
        want.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
        seen.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
        assert_eq!(seen, want, "served operations differ from documented ones");
        // Every route the README, the filter and the status page use is in it.
        let paths: Vec<&str> = spec().paths.paths.keys().map(String::as_str).collect();
        for path in [
            "/healthz",
            "/metrics",
            "/api/v1/openapi.json",
            "/api/v1/models",
            "/api/v1/models/{name}",
            "/api/v1/replicas",
            "/api/v1/replicas/{name}/drain",
            "/api/v1/replicas/{name}/undrain",
            "/api/v1/events",
            "/api/v1/events/stream",
            "/api/v1/summary",
            "/api/v1/aliases",
            "/api/v1/aliases/{name}",
            mm_wire::CLUSTER_PATH,
            mm_wire::READY_PATH,
            "/ui",
            "/ui/",
            "/ui/app.js",
            "/ui/style.css",
            mm_wire::ANY_REPLICA_PATH,
            "/internal/v1/route/{name}",
            "/internal/v1/metadata/{name}",
            mm_wire::USAGE_PATH,
            mm_wire::TABLE_PATH,
            mm_wire::FAILURE_PATH,
        ] {
            assert!(paths.contains(&path), "{path} is not documented");
        }
        assert_eq!(paths.len(), 25, "{paths:?}");
        assert!(mm_wire::ROUTE_PATH_PREFIX.ends_with('/'));
        assert!(mm_wire::METADATA_PATH_PREFIX.ends_with('/'));
    }

    /// The admin module adds routes only through `routes!` (which documents them): a plain
    /// `.route(` there would serve an undocumented route.
    #[test]
    fn routes_are_only_added_with_their_documentation() {
        for (file, text) in [
            ("mod.rs", include_str!("mod.rs")),
            ("ops.rs", include_str!("ops.rs")),
            ("ui.rs", include_str!("ui.rs")),
            ("cluster.rs", include_str!("cluster.rs")),
            ("aliases.rs", include_str!("aliases.rs")),
        ] {
            // (Split so that this file does not match itself.)
            for plain in ["(\"/", "(&format!", "(mm_wire::"].map(|arg| [".route", arg].concat()) {
                assert!(
                    !text.contains(&plain),
                    "{file} adds a route without routes!: {plain}"
                );
            }
            let plain_router = ["Router", "::new()"].concat();
            let text = text.replace(&["OpenApi", &plain_router].concat(), "");
            assert!(
                !text.contains(&plain_router),
                "{file} builds a plain axum router"
            );
        }
    }

    async fn is_fallback(response: axum::response::Response) -> bool {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).contains("no such endpoint")
    }

    #[tokio::test]
    async fn the_document_is_served_and_names_its_credentials() {
        let f = fixture_with(|_| {}).await;
        let request = Request::builder()
            .uri("/api/v1/openapi.json")
            .body(Body::empty())
            .unwrap();
        let response = f.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
            .await
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["gateway"]["name"], mm_wire::GATEWAY_TOKEN_HEADER);
        assert_eq!(schemes["admin"]["scheme"], "bearer");
        let spec = &doc["components"]["schemas"]["SpecRequest"];
        for field in ["storageUri", "storage", "memory", "minCopies", "maxCopies"] {
            assert!(spec["properties"].get(field).is_some(), "{field}: {spec}");
        }
        assert_eq!(spec["additionalProperties"], false, "{spec}");
    }
}
