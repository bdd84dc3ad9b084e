//! The admin API: bearer token (compared in constant time), licenses,
//! plugins, status, usage and metrics.

use super::{Server, error, read_body};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State as Extract};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tollgate::PluginSpec;
use tollgate_license::issuer::{MAX_LICENSE_BYTES, SignedLicense, parse_time};
use tollgate_license::{Clock, LicenseId, PluginName, SystemClock};
use tollgate_store::postgres::{PgError, PgStore};
use tollgate_store::state::{ExportCursor, MAX_EXPORT_PAGE, UsageFilter};

/// Largest license file accepted over the API (as large as from a file),
/// and how a refusal names it.
const LICENSE_BODY: (usize, &str) = (MAX_LICENSE_BYTES as usize, "the limit for a license file");
/// Largest plugin load request (a small JSON object) accepted, and how a
/// refusal names it.
const LOAD_BODY: (usize, &str) = (64 * 1024, "the limit for a plugin load request");

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
        .route("/v1/admin/usage/events", get(usage_events))
        .route("/v1/admin/alerts", get(alerts))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(server, authorize))
}

/// Who a bearer token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The admin token: reads and changes.
    Admin,
    /// The viewer token: reads only.
    Viewer,
}

/// Whether `given` is `token`, in the same time whatever both are: both
/// sides are hashed, and the digests compared in constant time.
fn same_token(given: &str, token: Option<&str>) -> bool {
    token.is_some_and(|token| {
        bool::from(Sha256::digest(given.as_bytes()).ct_eq(&Sha256::digest(token.as_bytes())))
    })
}

/// The role `given` grants on `server`, if any.
pub(crate) fn role_of(server: &Server, given: &str) -> Option<Role> {
    // Both comparisons are made, whichever matches.
    let admin = same_token(given, server.admin_token.as_deref());
    let viewer = same_token(given, server.viewer_token.as_deref());
    match (admin, viewer) {
        (true, _) => Some(Role::Admin),
        (false, true) => Some(Role::Viewer),
        (false, false) => None,
    }
}

/// Lets a request through with `Authorization: Bearer <admin token>`, or
/// with the viewer token when it only reads (GET or HEAD): the viewer token
/// changing anything gets 403.
async fn authorize(
    Extract(server): Extract<Arc<Server>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    // The dashboard's requests carry its session cookie instead.
    if given.is_none()
        && let Some(session) = server.sessions.of(request.headers())
    {
        return match crate::ui::session_allows(&session, reads, request.headers()) {
            Ok(()) => next.run(request).await,
            Err(refused) => *refused,
        };
    }
    match role_of(&server, given.unwrap_or("")) {
        Some(Role::Admin) => next.run(request).await,
        Some(Role::Viewer) if reads => next.run(request).await,
        Some(Role::Viewer) => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the viewer token may read but not change anything; use the admin token",
        ),
        None => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin (or, to read, viewer) bearer token is required",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

fn now() -> u64 {
    SystemClock.now_secs()
}

fn state_error(e: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, "bad-request", e)
}

/// Runs blocking host work (compiling, SQLite) off the async workers,
/// tracked so shutdown waits for it even if its client has gone; its error
/// becomes a 400 naming the problem.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    server: &Server,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Response> {
    match server.tasks.spawn_blocking(work).await {
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
    Json(json!({
        "host": host,
        "licenses": issued,
        "draining": server.shutdown.is_cancelled(),
        "latency": server.metrics.percentiles(),
        "audit": server.audits.last(),
    }))
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
    let text = match parsed_body(&server, &headers, body, LICENSE_BODY, |body| {
        license_body(body).map(str::to_string)
    })
    .await
    {
        Ok(text) => text,
        Err(response) => return response,
    };
    let installed = match server.shared_store.get() {
        Some(store) => shared(&server, store, store.install_text(&text, now())).await,
        None => {
            let host = server.host.clone();
            blocking(&server, move || host.install_license_text(&text)).await
        }
    };
    match installed {
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
    let reclaimed = match server.shared_store.get() {
        // Revoked in the store for every host, and here at once, with the
        // leases it ends here.
        Some(store) => match shared(&server, store, store.revoke(&id, now())).await {
            Ok(()) => server.host.licenses().revoke(&id).map_err(state_error),
            Err(response) => Err(response),
        },
        None => {
            let host = server.host.clone();
            blocking(&server, move || host.revoke_license(&id)).await
        }
    };
    match reclaimed {
        Ok(n) => Json(json!({ "revoked": true, "leases_reclaimed": n })).into_response(),
        Err(response) => response,
    }
}

/// Runs a change on the shared store, then puts the store's grants in
/// force here at once (the other hosts hear of it within their grants
/// period): a refusal is a 400 naming it, a store that does not answer a
/// 503.
async fn shared<T>(
    server: &Server,
    store: &PgStore,
    change: impl std::future::Future<Output = Result<T, PgError>>,
) -> Result<T, Response> {
    let done = change.await.map_err(|e| match e {
        PgError::Refused(_) | PgError::GrantRefused { .. } | PgError::UnknownGrant(_) => {
            state_error(e)
        }
        e => error(StatusCode::SERVICE_UNAVAILABLE, "store-unavailable", e),
    })?;
    if let Err(e) = store.apply_to(server.host.licenses()).await {
        tracing::warn!(
            "the change is in the shared store; putting it in force here failed, and is tried again: {e}"
        );
    }
    Ok(done)
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

/// Reads a `POST /v1/admin/licenses` body: the UTF-8 text of a license
/// file that parses (installing it checks its signature and window).
fn license_body(body: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(body)
        .map_err(|_| "the body must be a license file (UTF-8 text)".to_string())?;
    SignedLicense::parse(text).map_err(|e| e.to_string())?;
    Ok(text)
}

/// Reads a `POST /v1/admin/plugins` body.
fn parse_load_request(body: &[u8]) -> Result<LoadRequest, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!("expected {{\"name\", \"component\", \"requires\", \"may_use\"}}: {e}")
    })
}

/// Reads the query string of `GET /v1/admin/usage`.
fn usage_query(query: &[u8]) -> Result<UsageFilter, String> {
    let q: UsageQuery = serde_urlencoded::from_bytes(query).map_err(|e| {
        format!("the query takes since, until (times), license, plugin and per (day or hour), each at most once: {e}")
    })?;
    let time = |t: Option<String>| t.as_deref().map(parse_time).transpose();
    let hourly = match q.per.as_deref() {
        None | Some("day") => false,
        Some("hour") => true,
        Some(other) => return Err(format!("per is day or hour, not {other:?}")),
    };
    Ok(UsageFilter {
        since: time(q.since)?,
        until: time(q.until)?,
        license: q.license,
        plugin: q.plugin,
        hourly,
    })
}

/// An admin request input, as its route reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdminBody {
    /// The body of `POST /v1/admin/licenses`: a `tollgate-license v1` file.
    License,
    /// The body of `POST /v1/admin/plugins`: `{"name", "component", "requires", "may_use"}`.
    LoadPlugin,
    /// The query string of `GET /v1/admin/usage`: `since`, `until`, `license`, `plugin`.
    UsageQuery,
}

/// Reads `input` with the very function the admin route `kind` reads it
/// with before acting on it, and returns the refusal that route answers
/// with (400 `bad-request`); for fuzzing and bad-input tests. Bodies over
/// the route's size limit are refused earlier, while they are read (413).
pub fn parse_admin_body(kind: AdminBody, input: &[u8]) -> Result<(), String> {
    match kind {
        AdminBody::License => license_body(input).map(drop),
        AdminBody::LoadPlugin => parse_load_request(input).map(drop),
        AdminBody::UsageQuery => usage_query(input).map(drop),
    }
}

/// Reads an admin request's body within `limit` (`whose` names it in the
/// refusal) and the server's body budget, and parses it with `parse`; a
/// refusal is the response to send.
async fn parsed_body<T>(
    server: &Server,
    headers: &HeaderMap,
    body: Body,
    (limit, whose): (usize, &str),
    parse: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Result<T, Response> {
    let (body, _buffered) = read_body(
        headers,
        body,
        limit,
        server.read_timeout,
        &server.bodies,
        || whose.into(),
    )
    .await?;
    parse(&body).map_err(|e| error(StatusCode::BAD_REQUEST, "bad-request", e))
}

async fn load(Extract(server): Extract<Arc<Server>>, headers: HeaderMap, body: Body) -> Response {
    let req = match parsed_body(&server, &headers, body, LOAD_BODY, parse_load_request).await {
        Ok(req) => req,
        Err(response) => return response,
    };
    let host = server.host.clone();
    let spec = req.into_spec();
    match blocking(&server, move || host.load_plugin(spec)).await {
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
    match blocking(&server, move || host.reload_plugin(spec)).await {
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
    per: Option<String>,
}

async fn usage(Extract(server): Extract<Arc<Server>>, RawQuery(query): RawQuery) -> Response {
    let filter = match usage_query(query.as_deref().unwrap_or("").as_bytes()) {
        Ok(filter) => filter,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad-request", e),
    };
    let Some(state) = server.host.state() else {
        return error(
            StatusCode::NOT_FOUND,
            "no-state",
            "this host keeps no usage ledger",
        );
    };
    match state.usage(&filter) {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => state_error(e),
    }
}

/// The alerts firing now, and the last webhook deliveries with their
/// attempts.
async fn alerts(Extract(server): Extract<Arc<Server>>) -> Response {
    let deliveries = match server.host.state() {
        Some(state) => match state.outbox_recent(50) {
            Ok(recent) => recent,
            Err(e) => return state_error(e),
        },
        None => Vec::new(),
    };
    Json(json!({
        "firing": server.alerts.firing(),
        "deliveries": deliveries,
    }))
    .into_response()
}

/// The query of `GET /v1/admin/usage/events`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// The response header that carries the cursor of the next page.
pub const CURSOR_HEADER: &str = "tollgate-cursor";

/// Ledger rows after a cursor as CloudEvents 1.0 JSON lines; the next
/// cursor in the `tollgate-cursor` header.
async fn usage_events(
    Extract(server): Extract<Arc<Server>>,
    RawQuery(query): RawQuery,
) -> Response {
    let q: EventsQuery = match serde_urlencoded::from_bytes(
        query.as_deref().unwrap_or("").as_bytes(),
    ) {
        Ok(q) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!(
                    "the query takes after (a cursor or a ledger row number) and limit (1 to {MAX_EXPORT_PAGE}), each at most once: {e}"
                ),
            );
        }
    };
    let limit = q.limit.unwrap_or(1000);
    if !(1..=MAX_EXPORT_PAGE).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("limit must be 1 to {MAX_EXPORT_PAGE}, not {limit}"),
        );
    }
    let Some(state) = server.host.state() else {
        return error(
            StatusCode::NOT_FOUND,
            "no-state",
            "this host keeps no usage ledger",
        );
    };
    let Some(host) = server.host_id.as_deref() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the host key, which names this host's ledger chain, could not be read (the server's log says why)",
        );
    };
    let cursor = match ExportCursor::parse(q.after.as_deref().unwrap_or("0"), host) {
        Ok(cursor) => cursor,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad-request", e),
    };
    let page = match state.usage_events(host, &cursor, limit) {
        Ok(page) => page,
        Err(e) => return state_error(e),
    };
    let mut body = String::new();
    for event in &page.events {
        match serde_json::to_string(event) {
            Ok(line) => {
                body.push_str(&line);
                body.push('\n');
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        }
    }
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (
                header::HeaderName::from_static(CURSOR_HEADER),
                page.next.encode(),
            ),
        ],
        body,
    )
        .into_response()
}

async fn metrics(Extract(server): Extract<Arc<Server>>) -> Response {
    match server.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the metrics could not be written: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests;
