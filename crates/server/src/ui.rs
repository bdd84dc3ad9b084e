//! The operator dashboard at `/ui/`, on only when an admin token is set:
//! a login page that takes the admin or viewer token, a session cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` over HTTPS, expiring), and the
//! page itself, which reads and acts through the admin API with that
//! session. Every asset is compiled into the binary; every response carries
//! a strict Content-Security-Policy.

use crate::admin::{Role, role_of};
use crate::{Server, error};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "tollgate_session";
/// The header a session's changes must carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts after its login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 1024;
/// Largest login form accepted.
const LOGIN_BODY: usize = 4096;

/// The policy every dashboard response carries: nothing but this origin's
/// own scripts, styles and requests; no framing, no inline code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const LOGIN_HTML: &str = include_str!("ui/login.html");
const APP_HTML: &str = include_str!("ui/app.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// One logged-in browser.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    /// What its token allowed.
    pub(crate) role: Role,
    /// The token its changes must send in [`CSRF_HEADER`].
    pub(crate) csrf: String,
    expires: Instant,
}

/// The sessions of one server, by cookie value; lost on restart.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new session for `role`: its cookie value.
    fn open(&self, role: Role) -> Option<String> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                role,
                csrf,
                expires: now + SESSION_TTL,
            },
        );
        Some(id)
    }

    /// The live session a request's cookie names, if any.
    pub(crate) fn of(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers)?;
        let mut map = self.lock();
        match map.get(&id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&id);
                None
            }
            None => None,
        }
    }

    fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            self.lock().remove(&id);
        }
    }
}

/// 32 random bytes, hex.
fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

/// The session cookie's value in `headers`.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// Whether a request authenticated by its session may go on: reads always;
/// changes only for the admin role, and only with the session's CSRF token
/// in [`CSRF_HEADER`] (a page of another site cannot read it, so cannot
/// send it). `Err` is the refusal.
pub(crate) fn session_allows(
    session: &Session,
    reads: bool,
    headers: &HeaderMap,
) -> Result<(), Box<Response>> {
    if reads {
        return Ok(());
    }
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        sent.as_bytes(),
        session.csrf.as_bytes(),
    )) {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "csrf",
            format!(
                "a change made with the dashboard's session must send the session's {CSRF_HEADER} header"
            ),
        )));
    }
    if session.role != Role::Admin {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the viewer token may read but not change anything; log in with the admin token",
        )));
    }
    Ok(())
}

/// The dashboard's routes; none when the server has no admin token.
pub(crate) fn routes(server: Arc<Server>) -> Router<Arc<Server>> {
    if server.admin_token.is_none() {
        return Router::new();
    }
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(app))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/session", get(session))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css", STYLE_CSS) }),
        )
        .layer(middleware::from_fn(secure_headers))
}

/// Adds the Content-Security-Policy and its companions to every response.
async fn secure_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

fn html(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        text,
    )
        .into_response()
}

/// The dashboard, or the login page's address when not logged in.
async fn app(Extract(server): Extract<Arc<Server>>, headers: HeaderMap) -> Response {
    match server.sessions.of(&headers) {
        Some(_) => html(StatusCode::OK, APP_HTML.to_string()),
        None => Redirect::to("/ui/login").into_response(),
    }
}

async fn login_page() -> Response {
    html(StatusCode::OK, LOGIN_HTML.replace("{message}", ""))
}

/// The form's `token` field, URL-decoded.
fn form_token(body: &[u8]) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

/// Logs in with the admin or viewer token: a session cookie and the
/// dashboard, or the login page again saying the token was wrong.
async fn login(Extract(server): Extract<Arc<Server>>, body: Body) -> Response {
    let Ok(bytes) = axum::body::to_bytes(body, LOGIN_BODY).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request-too-large",
            "the login form is larger than 4 KiB",
        );
    };
    let token = form_token(&bytes).unwrap_or_default();
    let Some(role) = role_of(&server, token.trim()) else {
        let message = "<p class=\"error\" role=\"alert\">That token is not this server's admin or viewer token.</p>";
        return html(
            StatusCode::UNAUTHORIZED,
            LOGIN_HTML.replace("{message}", message),
        );
    };
    let Some(id) = server.sessions.open(role) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no randomness for a session id",
        );
    };
    let secure = if server.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    let mut response = Redirect::to("/ui/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Ends the session and clears its cookie.
async fn logout(Extract(server): Extract<Arc<Server>>, headers: HeaderMap) -> Response {
    server.sessions.close(&headers);
    let mut response = Redirect::to("/ui/login").into_response();
    let cleared = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&cleared) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// What the page needs to know of its session: the role and the CSRF token.
async fn session(Extract(server): Extract<Arc<Server>>, headers: HeaderMap) -> Response {
    match server.sessions.of(&headers) {
        Some(s) => axum::Json(serde_json::json!({
            "role": match s.role { Role::Admin => "admin", Role::Viewer => "viewer" },
            "csrf": s.csrf,
        }))
        .into_response(),
        None => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "log in at /ui/login",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; tollgate_session=abc; b=2"),
        );
        assert_eq!(cookie(&h).as_deref(), Some("abc"));
        let mut other = HeaderMap::new();
        other.append(
            header::COOKIE,
            HeaderValue::from_static("tollgate_sessionx=abc"),
        );
        assert_eq!(cookie(&other), None);
    }

    #[test]
    fn a_change_needs_the_csrf_token_and_the_admin_role() {
        let admin = Session {
            role: Role::Admin,
            csrf: "c".repeat(64),
            expires: Instant::now() + SESSION_TTL,
        };
        let viewer = Session {
            role: Role::Viewer,
            ..admin.clone()
        };
        let mut with = HeaderMap::new();
        with.insert(
            CSRF_HEADER,
            HeaderValue::from_str(&admin.csrf).expect("header"),
        );
        let without = HeaderMap::new();
        assert!(session_allows(&admin, true, &without).is_ok());
        assert!(session_allows(&viewer, true, &without).is_ok());
        assert!(session_allows(&admin, false, &with).is_ok());
        assert_eq!(
            session_allows(&admin, false, &without).map_err(|r| r.status()),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            session_allows(&viewer, false, &with).map_err(|r| r.status()),
            Err(StatusCode::FORBIDDEN)
        );
    }
}
