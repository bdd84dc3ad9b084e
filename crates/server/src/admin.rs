//! The admin API: bearer token (compared in constant time), licenses,
//! plugins, status, usage and metrics.

use super::{Server, error, read_body};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tollgate::PluginSpec;
use tollgate_license::{Clock, LicenseId, PluginName, SystemClock};
use tollgate_store::state::UsageFilter;

/// Largest license file accepted over the API.
const MAX_LICENSE_BODY: usize = 64 * 1024;
/// Largest plugin load request (a small JSON object) accepted.
const MAX_LOAD_BODY: usize = 64 * 1024;

pub(super) fn routes(server: Arc<Server>) -> Router<Arc<Server>> {
    Router::new()
        .route("/v1/admin/status", get(status))
        .route("/v1/admin/licenses", get(licenses).post(install))
        .route("/v1/admin/licenses/{id}", get(license))
        .route("/v1/admin/licenses/{id}/revoke", post(revoke))
        .route("/v1/admin/plugins", get(plugins).post(load))
        .route("/v1/admin/plugins/{name}", get(plugin).delete(unload))
        .route("/v1/admin/plugins/{name}/reload", post(reload))
        .route("/v1/admin/usage", get(usage))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(server, authorize))
}

/// Lets a request through only with `Authorization: Bearer <admin token>`.
async fn authorize(
    Extract(server): Extract<Arc<Server>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = match &server.admin_token {
        // Hash both sides so the comparison takes the same time whatever
        // their lengths, then compare the digests in constant time.
        Some(token) => {
            bool::from(Sha256::digest(given.as_bytes()).ct_eq(&Sha256::digest(token.as_bytes())))
        }
        None => false,
    };
    if ok {
        next.run(request).await
    } else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin bearer token is required",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        r
    }
}

fn now() -> u64 {
    SystemClock.now_secs()
}

fn state_error(e: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, "bad-request", e)
}

/// Runs blocking host work (compiling, SQLite) off the async workers; its
/// error becomes a 400 naming the problem.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(state_error(e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e)),
    }
}

async fn status(Extract(server): Extract<Arc<Server>>) -> Response {
    let host = server.host.status();
    let issued = match server.host.state() {
        Some(state) => match state.status(now()) {
            Ok(r) => Some(r),
            Err(e) => return state_error(e),
        },
        None => None,
    };
    Json(json!({ "host": host, "licenses": issued, "draining": server.draining.load(std::sync::atomic::Ordering::SeqCst) }))
        .into_response()
}

async fn licenses(Extract(server): Extract<Arc<Server>>) -> Response {
    Json(server.host.licenses().status()).into_response()
}

async fn license(Extract(server): Extract<Arc<Server>>, Path(id): Path<String>) -> Response {
    match server.host.licenses().describe(&id) {
        Some(s) => Json(s).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "unknown-license",
            format!("no license {id:?} is installed"),
        ),
    }
}

async fn install(
    Extract(server): Extract<Arc<Server>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (body, _buffered) = match read_body(
        &headers,
        body,
        MAX_LICENSE_BODY,
        server.read_timeout,
        &server.bodies,
        || "the limit for a license file".into(),
    )
    .await
    {
        Ok(read) => read,
        Err(response) => return response,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "the body must be a license file (UTF-8 text)",
        );
    };
    let host = server.host.clone();
    let text = text.to_string();
    match blocking(move || host.install_license_text(&text)).await {
        Ok(installed) => {
            let status = if installed.new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(json!({ "grant": installed.grant, "new": installed.new, "revoked": installed.revoked })))
                .into_response()
        }
        Err(response) => response,
    }
}

async fn revoke(Extract(server): Extract<Arc<Server>>, Path(id): Path<String>) -> Response {
    if server.host.licenses().pool(&id).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "unknown-license",
            format!("no license {id:?} is installed"),
        );
    }
    let host = server.host.clone();
    match blocking(move || host.revoke_license(&id)).await {
        Ok(n) => Json(json!({ "revoked": true, "leases_reclaimed": n })).into_response(),
        Err(response) => response,
    }
}

async fn plugins(Extract(server): Extract<Arc<Server>>) -> Response {
    Json(server.host.status().plugins).into_response()
}

async fn plugin(Extract(server): Extract<Arc<Server>>, Path(name): Path<String>) -> Response {
    match server
        .host
        .status()
        .plugins
        .into_iter()
        .find(|p| p.name == name)
    {
        Some(p) => Json(p).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "unknown-plugin",
            format!("no plugin named {name:?} is loaded"),
        ),
    }
}

/// Body of `POST /v1/admin/plugins`: the plugin's name, component and
/// licenses; its limits are [`tollgate::Limits::default`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    name: PluginName,
    component: std::path::PathBuf,
    #[serde(default)]
    requires: Vec<LicenseId>,
    #[serde(default)]
    may_use: Vec<LicenseId>,
}

impl LoadRequest {
    /// The spec the host loads.
    fn into_spec(self) -> PluginSpec {
        let mut spec = PluginSpec::file(self.name, self.component);
        spec.requires = self.requires.into_iter().map(String::from).collect();
        spec.may_use = self.may_use.into_iter().map(String::from).collect();
        spec
    }
}

fn parse_load_request(body: &[u8]) -> Result<LoadRequest, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!("expected {{\"name\", \"component\", \"requires\", \"may_use\"}}: {e}")
    })
}

/// An admin request body, as its route reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminBody {
    /// `POST /v1/admin/licenses`: a `tollgate-license v1` file.
    License,
    /// `POST /v1/admin/plugins`: `{"name", "component", "requires", "may_use"}`.
    LoadPlugin,
    /// `since`/`until` of `GET /v1/admin/usage`: a time.
    UsageTime,
}

/// Parses `body` exactly as the admin route `kind` does before acting on
/// it, and says what is wrong with it; for fuzzing and bad-input tests.
pub fn parse_admin_body(kind: AdminBody, body: &[u8]) -> Result<(), String> {
    if kind == AdminBody::License && body.len() > MAX_LICENSE_BODY {
        return Err("a license file is at most 64 KiB".into());
    }
    if kind == AdminBody::LoadPlugin && body.len() > MAX_LOAD_BODY {
        return Err("a plugin load request is at most 64 KiB".into());
    }
    let text = || std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text".to_string());
    match kind {
        AdminBody::License => tollgate_license::issuer::SignedLicense::parse(text()?)
            .map(drop)
            .map_err(|e| e.to_string()),
        AdminBody::LoadPlugin => parse_load_request(body).map(drop),
        AdminBody::UsageTime => tollgate_license::issuer::parse_time(text()?).map(drop),
    }
}

async fn load(Extract(server): Extract<Arc<Server>>, headers: HeaderMap, body: Body) -> Response {
    let (body, _buffered) = match read_body(
        &headers,
        body,
        MAX_LOAD_BODY,
        server.read_timeout,
        &server.bodies,
        || "the limit for a plugin load request".into(),
    )
    .await
    {
        Ok(read) => read,
        Err(response) => return response,
    };
    let req = match parse_load_request(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad-request", e),
    };
    let host = server.host.clone();
    let spec = req.into_spec();
    match blocking(move || host.load_plugin(spec)).await {
        Ok(p) => (
            StatusCode::CREATED,
            Json(json!({ "name": p.name(), "digest": p.digest(), "from_cache": p.from_cache() })),
        )
            .into_response(),
        Err(response) => response,
    }
}

async fn reload(Extract(server): Extract<Arc<Server>>, Path(name): Path<String>) -> Response {
    // The spec it was loaded with: the component file is read again.
    let Some(spec) = server.host.plugin_spec(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown-plugin",
            format!("no plugin named {name:?} is loaded"),
        );
    };
    let host = server.host.clone();
    match blocking(move || host.reload_plugin(spec)).await {
        Ok(p) => {
            Json(json!({ "name": p.name(), "digest": p.digest(), "from_cache": p.from_cache() }))
                .into_response()
        }
        Err(response) => response,
    }
}

async fn unload(Extract(server): Extract<Arc<Server>>, Path(name): Path<String>) -> Response {
    if server.host.unload_plugin(&name) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            "unknown-plugin",
            format!("no plugin named {name:?} is loaded"),
        )
    }
}

/// Query of `GET /v1/admin/usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    since: Option<String>,
    until: Option<String>,
    license: Option<String>,
    plugin: Option<String>,
}

async fn usage(Extract(server): Extract<Arc<Server>>, Query(q): Query<UsageQuery>) -> Response {
    let Some(state) = server.host.state() else {
        return error(
            StatusCode::NOT_FOUND,
            "no-state",
            "this host keeps no usage ledger",
        );
    };
    let time = |t: &Option<String>| {
        t.as_deref()
            .map(tollgate_license::issuer::parse_time)
            .transpose()
    };
    let (since, until) = match (time(&q.since), time(&q.until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, "bad-request", e),
    };
    match state.usage(&UsageFilter {
        since,
        until,
        license: q.license,
        plugin: q.plugin,
    }) {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => state_error(e),
    }
}

async fn metrics(Extract(server): Extract<Arc<Server>>) -> Response {
    let mut text = server.metrics.render(&server.host.status());
    server.render_limits(&mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::Limits;
    use tollgate::runtime::ComponentSource;

    #[test]
    fn a_load_request_becomes_a_spec_with_the_default_limits() {
        let body = br#"{"name": "hello", "component": "/p/hello.wasm", "requires": ["demo"], "may_use": ["extra.v1"]}"#;
        let spec = parse_load_request(body).expect("valid").into_spec();
        assert_eq!(spec.name, "hello");
        assert_eq!(
            spec.component,
            ComponentSource::File("/p/hello.wasm".into())
        );
        assert_eq!(
            (spec.requires, spec.may_use),
            (vec!["demo".to_string()], vec!["extra.v1".to_string()])
        );
        assert_eq!(spec.limits, Limits::default());
    }

    #[test]
    fn a_load_request_names_a_bad_name_or_id_by_its_rule() {
        let refused =
            |body: &str| parse_admin_body(AdminBody::LoadPlugin, body.as_bytes()).expect_err(body);
        let why = refused(r#"{"name": "Hello", "component": "/p/h.wasm"}"#);
        assert!(
            why.contains("invalid plugin name \"Hello\": it contains 'H'"),
            "{why}"
        );
        let why = refused(r#"{"name": "h", "component": "/p/h.wasm", "may_use": ["bad id"]}"#);
        assert!(
            why.contains("invalid license id \"bad id\": it contains ' '"),
            "{why}"
        );
    }
}
