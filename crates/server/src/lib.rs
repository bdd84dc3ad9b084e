//! `tollgate serve`: the plugin host as an HTTP service.
//!
//! Service users call `POST /v1/plugins/{name}/invoke`; operators use the
//! admin API under `/v1/admin/` and `GET /metrics` with a bearer token;
//! `GET /healthz` and `GET /readyz` are open. Each plugin call runs as an
//! async wasmtime call inside its request handler, in a store of its own; a
//! caller that disconnects drops the handler and with it the call, even one
//! blocked in a host call, and its seats come back.
//!
//! [`config`] reads `tollgate.toml`, the file `serve` starts from.
#![deny(missing_docs)]

mod admin;
pub mod alerts;
mod audit;
pub mod config;
mod conn;
mod metrics;
mod shared;
pub mod tls;
pub mod ui;
mod unread;

pub use admin::{AdminBody, parse_admin_body};

use crate::config::{AllowedHost, Config};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use conn::{BodyBudget, ClientSlots, HostRefusal, Reservation, TimedWrites};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics::Metrics;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate::runtime::{Allocator, InvokeError};
use tollgate::{Host, HostError};
use tollgate_store::state::State;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The host could not start.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A configured plugin could not be loaded.
    #[error("plugin {plugin} from the config: {source}")]
    Plugin {
        /// The plugin.
        plugin: String,
        /// Why.
        source: tollgate::runtime::LoadError,
    },
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {source}; pick another `listen` address or stop what uses it"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
    /// The shared store could not be used.
    #[error(transparent)]
    Store(#[from] tollgate_store::postgres::PgError),
    /// The TLS certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A shared store needs a state directory for the ledger spool.
    #[error("a host on a shared store needs a state directory for its ledger spool; set `state`")]
    SharedNeedsState,
}

/// Shared state of the running server.
pub(crate) struct Server {
    pub(crate) host: Arc<Host>,
    pub(crate) admin_token: Option<String>,
    /// Bearer token that may read the admin API but change nothing.
    pub(crate) viewer_token: Option<String>,
    /// The dashboard's logged-in browsers.
    pub(crate) sessions: ui::Sessions,
    /// Whether the server speaks HTTPS (session cookies are `Secure` then).
    pub(crate) tls: bool,
    pub(crate) metrics: Metrics,
    calls: Semaphore,
    /// Cancelled when the server starts shutting down: it drains.
    pub(crate) shutdown: CancellationToken,
    /// Connections, the license refresh and blocking admin work: all that
    /// may hold the host.
    pub(crate) tasks: TaskTracker,
    /// Plugin calls running now.
    in_flight: TaskTracker,
    /// Cancelled when the grace period is over: calls still running end.
    cancel_calls: CancellationToken,
    /// How long a request body may take to arrive.
    pub(crate) read_timeout: Duration,
    /// Bytes of request bodies held at once, over all requests.
    pub(crate) bodies: Arc<BodyBudget>,
    /// Open connections per client address.
    clients: Arc<ClientSlots>,
    /// Host names requests must name; `None`: any.
    allowed_hosts: Option<Vec<AllowedHost>>,
    /// On a shared store: whether its seat batches can be in force.
    pub(crate) store_health:
        std::sync::OnceLock<Arc<tollgate_store::postgres::batches::StoreHealth>>,
    /// On a shared store: the store, where the admin API installs and
    /// revokes licenses for every host.
    pub(crate) shared_store: std::sync::OnceLock<tollgate_store::postgres::PgStore>,
    /// The host key's id, which names this host's ledger chain (`None`:
    /// no state directory, or its key could not be read).
    pub(crate) host_id: Option<String>,
    /// Alert thresholds, which fire, and their webhook.
    pub(crate) alerts: Arc<alerts::Alerts>,
    /// The ledger's last audit.
    pub(crate) audits: Arc<audit::Audits>,
}

impl Server {
    /// The server state for `host`, with the settings of `config`.
    pub(crate) fn new(host: Arc<Host>, config: &Config) -> Self {
        let bodies = Arc::new(BodyBudget::new(config.max_buffered_request_bytes));
        let clients = Arc::new(ClientSlots::new(
            config.max_connections_per_client,
            config.trusted_proxies.clone(),
        ));
        let metrics = Metrics::new(host.clone(), bodies.clone(), clients.clone());
        let host_id = host.state().and_then(|state| {
            tollgate_store::state::HostKey::open_or_create(state.dir())
                .map(|key| key.key_id())
                .inspect_err(|e| {
                    tracing::warn!("the host key cannot be read: {e}; alerts name this host \"unknown\" and usage export is off")
                })
                .ok()
        });
        let alerts = Arc::new(alerts::Alerts::new(
            config.alerts.clone(),
            &host,
            host_id.clone().unwrap_or_else(|| "unknown".to_string()),
            metrics.alert_gauge(),
        ));
        Self {
            host: host.clone(),
            admin_token: config.admin_token.clone(),
            viewer_token: config.viewer_token.clone(),
            sessions: ui::Sessions::default(),
            tls: config.tls_cert.is_some(),
            metrics,
            host_id,
            alerts,
            audits: Arc::default(),
            calls: Semaphore::new(config.max_concurrent_calls as usize),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            in_flight: TaskTracker::new(),
            cancel_calls: CancellationToken::new(),
            read_timeout: config.read_timeout,
            bodies,
            clients,
            allowed_hosts: config.allowed_hosts(),
            store_health: std::sync::OnceLock::new(),
            shared_store: std::sync::OnceLock::new(),
        }
    }
}

/// Builds the host a config describes: state, compile cache, pooling
/// allocator sized from the config, license rules, and every plugin.
pub fn build_host(config: &Config) -> Result<Host, ServeError> {
    build_host_on(config, None)
}

/// [`build_host`], reading time from `clock` when given (a host on a
/// shared store reads the database's).
fn build_host_on(
    config: &Config,
    clock: Option<Arc<tollgate_store::postgres::clock::StoreClock>>,
) -> Result<Host, ServeError> {
    let state_dir = config.state.clone().unwrap_or_else(State::default_dir);
    let cache = config
        .compile_cache
        .clone()
        .unwrap_or_else(|| state_dir.join("compile-cache"));
    // One slot set per call that may run at once, each as large as the
    // most any configured plugin may take in one call (see `Runtime::new`).
    let allocator = Allocator::pooling(
        config.max_concurrent_calls,
        config.plugins.iter().map(|spec| &spec.limits),
    );
    let mut builder = Host::builder()
        .state(state_dir)
        .compile_cache(cache)
        .allocator(allocator)
        .protect(&config.path, "the config file");
    for (file, what) in config.secret_files() {
        builder = builder.protect(file, what);
    }
    if let Some(pins) = &config.trusted_issuers {
        builder = builder.pin_issuers(pins.clone());
    }
    if config.store.is_some() {
        builder = builder.shared_seats();
    }
    if let Some(clock) = clock {
        builder = builder.clock(clock);
    }
    let host = builder.build()?;
    if config.store.is_none() {
        apply_rules(&host, config);
    }
    for spec in &config.plugins {
        let plugin = host
            .load_plugin(spec.clone())
            .map_err(|source| ServeError::Plugin {
                plugin: spec.name.clone(),
                source,
            })?;
        tracing::info!(plugin = %spec.name, digest = plugin.digest(), from_cache = plugin.from_cache(), "plugin loaded");
    }
    Ok(host)
}

/// Puts the config's `[license.*]` rules in force for the licenses
/// installed on `host`.
fn apply_rules(host: &Host, config: &Config) {
    for (id, rules) in &config.licenses {
        if host.licenses().set_rules(id, rules.clone()).is_err() {
            tracing::warn!("rules for license {id} wait: no license {id} is installed yet");
        }
    }
}

/// Runs the server until SIGTERM or SIGINT, then drains: stops accepting,
/// lets calls in flight finish within the grace period, cancels the rest,
/// flushes the ledger. `ready` gets the bound address.
pub async fn serve(config: Config, ready: impl FnOnce(SocketAddr)) -> Result<(), ServeError> {
    // A host on a shared store judges grant windows, and stamps its ledger
    // rows, by the database's clock.
    let clock = config
        .store
        .as_ref()
        .map(|_| Arc::new(tollgate_store::postgres::clock::StoreClock::default()));
    let host = Arc::new(tokio::task::block_in_place(|| {
        build_host_on(&config, clock.clone())
    })?);
    let server = Arc::new(Server::new(host.clone(), &config));
    if let Some(url) = &config.store {
        // The grants and the rules come from the store, which refuses this
        // host if its rules differ from every other host's.
        let clock = clock.unwrap_or_default();
        shared::start(url, &config, &clock, &host, &server).await?;
    }
    let app = router(server.clone());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
            tls::server_config(cert, key).map_err(ServeError::Tls)?,
        )),
        _ => None,
    };
    tracing::info!(%addr, tls = tls.is_some(), "listening");
    ready(addr);
    server
        .tasks
        .spawn(refresh_licenses(host.clone(), server.shutdown.clone()));
    server.tasks.spawn(audit::run(
        host.clone(),
        server.audits.clone(),
        server.shutdown.clone(),
    ));
    if server.alerts.configured() {
        server.tasks.spawn(alerts::evaluate(
            host.clone(),
            server.alerts.clone(),
            server.shutdown.clone(),
        ));
        server.tasks.spawn(alerts::deliver(
            host.clone(),
            server.alerts.clone(),
            server.shutdown.clone(),
        ));
    }
    accept_until_signal(listener, app, &server, &config, tls).await;
    let grace = config.grace_period;
    tracing::info!("shutting down: no new connections; calls in flight have {grace:?}");
    // Idle connections close now, busy ones after their response; the
    // license refresh stops and `/readyz` answers 503.
    server.shutdown.cancel();
    server.tasks.close();
    if tokio::time::timeout(grace, server.tasks.wait())
        .await
        .is_err()
    {
        let n = server.in_flight.len();
        server.cancel_calls.cancel();
        if n > 0 {
            tracing::warn!("grace period over: cancelled {n} call(s); their seats come back");
        }
    }
    // Cancelled calls unwind and their connections close; then nothing
    // else holds the host, and dropping it commits what the ledger holds.
    let unwound = tokio::time::timeout(UNWIND, server.tasks.wait())
        .await
        .is_ok();
    drop(server);
    match Arc::try_unwrap(host) {
        Ok(host) => tokio::task::block_in_place(|| drop(host)),
        Err(host) => {
            // Work still running past the deadline: commit what is
            // recorded; its leases end with the process.
            if let Err(e) = host.licenses().ledger().sync() {
                tracing::error!("final ledger commit failed: {e}");
            }
            if unwound {
                tracing::warn!("the host was still in use at exit");
            } else {
                tracing::warn!("calls still running at exit");
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long cancelled calls have to unwind after the grace period.
const UNWIND: Duration = Duration::from_secs(5);

/// How often a running server reads grants and revocations again.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Every [`REFRESH_EVERY`], puts in force what `tollgate license …` changed
/// on the state directory (a revocation reaches the running host within two
/// ticks) and ends the seats of grants that expired. Stops at `shutdown`,
/// after the refresh under way if there is one.
async fn refresh_licenses(host: Arc<Host>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let host = host.clone();
        match tokio::task::spawn_blocking(move || host.reload_licenses()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("reading licenses from the state directory failed: {e}"),
            Err(e) => tracing::warn!("license refresh stopped: {e}"),
        }
    }
}

/// Serves connections from `listener` until SIGTERM or SIGINT: at most
/// `max_connections` at once and `max_connections_per_client` from one
/// client address (beyond it: 429 and closed), each given `read_timeout` to
/// send a request head (and closed after as long idle), and closed when the
/// client takes none of its response for `write_timeout`. Each connection
/// is a task in `server.tasks` that ends gracefully at `server.shutdown`.
async fn accept_until_signal(
    listener: tokio::net::TcpListener,
    app: Router,
    server: &Server,
    config: &Config,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let open = Arc::new(Semaphore::new(config.max_connections as usize));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.read_timeout);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        // Past `max_connections`, stop accepting: new clients wait in the
        // kernel's backlog instead of using up file descriptors.
        let permit = tokio::select! {
            () = &mut signal => break,
            permit = open.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was
                    // accepted: keep serving the ones open.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = server.clients.enter(peer.ip()) else {
            // Over its client's limit: answered without reading the request
            // (a full send buffer only loses the answer) and closed, which
            // frees the place in `max_connections` at once.
            tracing::debug!(%peer, "connection refused: too many from this client");
            let _ = stream.try_write(&conn::too_many_connections(
                config.max_connections_per_client,
            ));
            drop(stream);
            drop(permit);
            continue;
        };
        let timed = TimedWrites::new(stream, config.write_timeout);
        let service = TowerToHyperService::new(app.clone());
        let http = http.clone();
        let shutdown = server.shutdown.clone();
        let tls = tls.clone();
        // A TLS handshake has as long as a request head to arrive.
        let handshake = config.read_timeout;
        server.tasks.spawn(async move {
            let io = match tls {
                None => Either::Left(timed),
                Some(acceptor) => {
                    match tokio::time::timeout(handshake, acceptor.accept(timed)).await {
                        Ok(Ok(stream)) => Either::Right(stream),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let conn = http.serve_connection(TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = shutdown.cancelled() => {
                    // Idle: closed now; busy: closed after its response.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(slot);
            drop(permit);
        });
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/v1/plugins/{name}/invoke", post(invoke))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(admin::routes(server.clone()))
        .merge(ui::routes(server.clone()))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such route; plugins are called at POST /v1/plugins/{name}/invoke",
            )
        })
        .layer(middleware::from_fn_with_state(server.clone(), allowed_host))
        .layer(middleware::from_fn(unread::close_if_unread))
        .with_state(server)
}

/// Lets a request through only if it names a host in `allowed_hosts`
/// (which guards a loopback server against DNS rebinding): 421 for another
/// host, 400 for none.
async fn allowed_host(
    Extract(server): Extract<Arc<Server>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(allowed) = &server.allowed_hosts else {
        return next.run(request).await;
    };
    let header = request
        .headers()
        .get(header::HOST)
        .map(HeaderValue::as_bytes);
    let authority = request.uri().authority().map(|a| a.as_str());
    match conn::check_host(allowed, header, authority) {
        Ok(()) => next.run(request).await,
        Err(HostRefusal::Missing) => error(
            StatusCode::BAD_REQUEST,
            "host-missing",
            "the request has no Host header; send one naming this server",
        ),
        Err(HostRefusal::NotAllowed) => error(
            StatusCode::MISDIRECTED_REQUEST,
            "host-not-allowed",
            "this server does not answer to the host the request names; use a host name in its `allowed_hosts` (by default on a loopback address: localhost, 127.0.0.1 or [::1]), or ask the operator to add yours",
        ),
    }
}

async fn readyz(Extract(server): Extract<Arc<Server>>) -> Response {
    if server.shutdown.is_cancelled() {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the server is shutting down",
        )
    } else if let Err(e) = server.host.ledger_ready() {
        error(StatusCode::SERVICE_UNAVAILABLE, "ledger-unavailable", e)
    } else if server.store_unavailable() {
        store_unavailable()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

impl Server {
    /// Whether this host is on a shared store whose batches cannot be in
    /// force now (it has not answered for longer than they live).
    fn store_unavailable(&self) -> bool {
        self.store_health.get().is_some_and(|h| !h.available())
    }
}

/// 503 `store-unavailable`: the shared store has not answered long enough
/// that this host holds no seats.
fn store_unavailable() -> Response {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
        "the shared store has not answered for longer than seat batches live, so this host holds no seats; it serves again when the store is back",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// A JSON error body: `{"error": CODE, "message": ...}`.
pub(crate) fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        axum::Json(json!({ "error": code, "message": message.to_string() })),
    )
        .into_response()
}

/// The body length a request declares in `Content-Length`, if it does.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The 413 answer for a body over `limit`; `whose` names the limit.
fn too_large(whose: String, limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request-too-large",
        format!("the request body is over {whose} of {limit} bytes; send less"),
    )
}

/// How reading a body went wrong.
enum BodyError {
    /// Over the request's own limit.
    TooLarge,
    /// Over what the server may buffer over all requests.
    OverBudget,
    /// Malformed or ended early.
    Unreadable(axum::BoxError),
}

/// Reads a request body of at most `limit` bytes within `timeout`, taking
/// its bytes from the server's `budget` for buffered bodies as they arrive
/// (all at once when `Content-Length` says how many). Refuses with 413 a
/// body over the limit (at once when `Content-Length` says so), 503
/// `server-busy` one the budget cannot hold, 400 one that is malformed or
/// ends early, 408 one that is too slow. `whose` names the limit in the
/// message. The bytes stay counted until the reservation is dropped.
pub(crate) async fn read_body<'a>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
    budget: &'a BodyBudget,
    whose: impl FnOnce() -> String,
) -> Result<(bytes::Bytes, Reservation<'a>), Response> {
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(whose(), limit));
    }
    let mut reservation = budget.start();
    let busy = |budget: &BodyBudget| {
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server-busy",
            format!(
                "the server is already holding as many request bodies as it may ({} bytes, its `max_buffered_request_bytes`); retry in a moment",
                budget.limit()
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    };
    // `declared` is at most `limit`, a `usize`.
    let expected = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit));
    if !reservation.cover(expected) {
        return Err(busy(budget));
    }
    let read = async {
        let mut body = http_body_util::Limited::new(body, limit);
        let mut buffer = bytes::BytesMut::with_capacity(expected);
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            let frame = frame.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    BodyError::TooLarge
                } else {
                    BodyError::Unreadable(e)
                }
            })?;
            if let Ok(data) = frame.into_data() {
                if !reservation.cover(buffer.len() + data.len()) {
                    return Err(BodyError::OverBudget);
                }
                buffer.extend_from_slice(&data);
            }
        }
        Ok(buffer.freeze())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(bytes)) => Ok((bytes, reservation)),
        Ok(Err(BodyError::TooLarge)) => Err(too_large(whose(), limit)),
        Ok(Err(BodyError::OverBudget)) => Err(busy(budget)),
        Ok(Err(BodyError::Unreadable(e))) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!(
                "the request body could not be read: {e}; send a complete body that matches its Content-Length or chunk sizes"
            ),
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            format!(
                "the request body did not arrive within {}; send it faster or ask the operator to raise `read_timeout`",
                humantime::format_duration(timeout)
            ),
        )),
    }
}

async fn invoke(
    Extract(server): Extract<Arc<Server>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some((limit, licensed)) = server
        .host
        .plugin(&name)
        .map(|p| (p.limits().max_input_bytes, !p.spec().requires.is_empty()))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown-plugin",
            format!("no plugin named {name:?} is loaded"),
        );
    };
    let whose = || format!("plugin {name}'s limit");
    if declared_length(&headers).is_some_and(|n| n > limit as u64) {
        return too_large(whose(), limit);
    }
    // The call's place comes first: a request waiting for one has none of
    // its body read (nor a `100 Continue` sent), so waiting requests hold
    // no buffered bytes.
    let Ok(_permit) = server.calls.acquire().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the server is shutting down",
        );
    };
    let (input, _buffered) = match read_body(
        &headers,
        body,
        limit,
        server.read_timeout,
        &server.bodies,
        whose,
    )
    .await
    {
        Ok(read) => read,
        Err(response) => return response,
    };
    // With the shared store away this host holds no seats: a plugin that
    // requires a license is refused at once rather than left to wait (its
    // body read, so the connection serves the next request).
    if licensed && server.store_unavailable() {
        return store_unavailable();
    }
    // Counted in flight until the handler finishes or is dropped.
    let _in_flight = server.in_flight.token();
    let started = Instant::now();
    // The call runs in this handler: if the client goes away the handler is
    // dropped, and with it the call and its store, which gives the seats
    // back as `store-dropped`.
    let (invocation, result) = tokio::select! {
        call = server.host.invoke_call_async(&name, &input) => (Some(call.0), call.1),
        () = server.cancel_calls.cancelled() => (None, Err(InvokeError::Cancelled { plugin: name.clone() })),
    };
    let outcome = result.as_ref().map_or_else(InvokeError::code, |_| "ok");
    server.metrics.observe(&name, outcome, started.elapsed());
    let mut response = match result {
        Ok(output) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            output,
        )
            .into_response(),
        // No seat because the shared store is away, not because the
        // license's seats are taken.
        Err(e)
            if matches!(e.code(), "exhausted" | "seat-wait-timed-out")
                && server.store_unavailable() =>
        {
            store_unavailable()
        }
        Err(e) => invoke_error(&e),
    };
    // The ledger's invocation id, so a caller can match a response to its
    // usage rows.
    if let Some(id) = invocation.filter(|&id| id != 0) {
        response
            .headers_mut()
            .insert(INVOCATION_HEADER, HeaderValue::from(id));
    }
    response
}

/// Response header carrying the call's invocation id in the usage ledger.
pub const INVOCATION_HEADER: &str = "x-tollgate-invocation";

/// The HTTP status for each way a call can fail.
fn invoke_error(e: &InvokeError) -> Response {
    let status = match e.code() {
        "unknown-plugin" => StatusCode::NOT_FOUND,
        "exhausted" | "seat-wait-timed-out" | "ledger-unavailable" | "lease-lapsed" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        "plugin-error" => StatusCode::UNPROCESSABLE_ENTITY,
        "time-limit" => StatusCode::GATEWAY_TIMEOUT,
        "plugin-trap" | "memory-limit" | "resource-limit" | "response-too-large" | "cancelled" => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::FORBIDDEN,
    };
    // A fixed message per code: the plugin's own text (trap details,
    // function names) stays in the debug log under the invocation id.
    let mut response = error(status, e.code(), e.public_message());
    if e.code() == "exhausted" {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
