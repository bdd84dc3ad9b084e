//! The dashboard's server side over real HTTP: login with the admin or
//! viewer token, the session cookie's attributes, the strict
//! Content-Security-Policy, CSRF-checked changes, the viewer refused every
//! change, logout, and no dashboard without an admin token.

use serde_json::Value;

mod common;

use common::*;

const VIEWER: &str = "viewer-token-0123456789";

/// An agent that follows no redirects and keeps no cookies.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// Logs in with `token`: the session cookie (`name=value`) and the
/// `Set-Cookie` header it came in.
fn login(s: &Server, token: &str) -> (String, String) {
    let r = agent()
        .post(format!("{}/ui/login", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .send(format!("token={token}"))
        .expect("login");
    assert_eq!(
        r.status().as_u16(),
        303,
        "logged in and sent to the dashboard"
    );
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/ui/")
    );
    let set = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_string();
    let pair = set.split(';').next().expect("name=value").to_string();
    (pair, set)
}

fn get(s: &Server, path: &str, cookie: &str) -> (u16, String, ureq::http::HeaderMap) {
    let mut r = agent()
        .get(format!("{}{path}", s.base))
        .header("cookie", cookie)
        .call()
        .expect("GET");
    let headers = r.headers().clone();
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap_or_default(),
        headers,
    )
}

fn post(s: &Server, path: &str, cookie: &str, csrf: Option<&str>) -> (u16, String) {
    let mut req = agent()
        .post(format!("{}{path}", s.base))
        .header("cookie", cookie);
    if let Some(csrf) = csrf {
        req = req.header("x-csrf-token", csrf);
    }
    let mut r = req.send("").expect("POST");
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

#[test]
fn login_sessions_csrf_and_the_viewer_role() {
    let scratch = prepare("ui", "2");
    let root = scratch.path();
    std::fs::write(root.join("viewer.token"), VIEWER).expect("token");
    let s = Server::start_with(root, "5s", "viewer_token_file = \"viewer.token\"\n");

    // Not logged in: the login page, under the strict policy.
    let (st, _, headers) = get(&s, "/ui/", "");
    assert_eq!(st, 303);
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some("/ui/login")
    );
    let (st, page, headers) = get(&s, "/ui/login", "");
    assert_eq!(st, 200);
    assert!(page.contains("type=\"password\""), "{page}");
    let csp = headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .expect("a CSP");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(
        headers.get("x-frame-options").and_then(|v| v.to_str().ok()),
        Some("DENY")
    );
    for asset in ["/ui/app.js", "/ui/style.css"] {
        assert_eq!(get(&s, asset, "").0, 200, "{asset}");
    }

    // A wrong token: the login page again, saying so; no cookie.
    let r = agent()
        .post(format!("{}/ui/login", s.base))
        .send("token=wrong-token-wrong-token")
        .expect("login");
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get("set-cookie").is_none());

    // The admin: an HttpOnly, SameSite=Strict, expiring cookie (not Secure
    // over plain HTTP), the page, and the admin API through the session.
    let (admin, set) = login(&s, TOKEN);
    for attribute in ["HttpOnly", "SameSite=Strict", "Max-Age=43200", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    let (st, page, _) = get(&s, "/ui/", &admin);
    assert_eq!(st, 200);
    assert!(
        page.contains("/ui/app.js") && !page.contains("<script>"),
        "{page}"
    );
    let (st, body, _) = get(&s, "/ui/session", &admin);
    let session: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!((st, session["role"].as_str()), (200, Some("admin")));
    let csrf = session["csrf"].as_str().expect("csrf").to_string();
    assert_eq!(csrf.len(), 64);
    let (st, body, _) = get(&s, "/v1/admin/status", &admin);
    assert_eq!(st, 200, "{body}");

    // A change without the CSRF token is refused, with it done.
    let (st, body) = post(&s, "/v1/admin/plugins/hello/reload", &admin, None);
    assert_eq!((st, code(&body).as_str()), (403, "csrf"), "{body}");
    let (st, body) = post(
        &s,
        "/v1/admin/plugins/hello/reload",
        &admin,
        Some("0".repeat(64).as_str()),
    );
    assert_eq!((st, code(&body).as_str()), (403, "csrf"), "{body}");
    let (st, body) = post(&s, "/v1/admin/plugins/hello/reload", &admin, Some(&csrf));
    assert_eq!(st, 200, "{body}");

    // The viewer reads everything and changes nothing, CSRF token or not.
    let (viewer, _) = login(&s, VIEWER);
    let (_, body, _) = get(&s, "/ui/session", &viewer);
    let session: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(session["role"], "viewer");
    let viewer_csrf = session["csrf"].as_str().expect("csrf").to_string();
    assert_eq!(get(&s, "/v1/admin/alerts", &viewer).0, 200);
    let (st, body) = post(
        &s,
        "/v1/admin/licenses/demo/revoke",
        &viewer,
        Some(&viewer_csrf),
    );
    assert_eq!((st, code(&body).as_str()), (403, "forbidden"), "{body}");
    assert_eq!(s.demo()["revoked"], false);

    // Logging out ends the session: its cookie no longer works.
    let out = agent()
        .post(format!("{}/ui/logout", s.base))
        .header("cookie", &admin)
        .send("")
        .expect("POST");
    assert_eq!(out.status().as_u16(), 303);
    let cleared = out
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        cleared.starts_with("tollgate_session=;") && cleared.contains("Max-Age=0"),
        "the browser is told to drop the cookie: {cleared}"
    );
    assert_eq!(get(&s, "/ui/session", &admin).0, 401);
    assert_eq!(get(&s, "/v1/admin/status", &admin).0, 401);
    assert_eq!(
        get(&s, "/v1/admin/status", &viewer).0,
        200,
        "other sessions stay"
    );
    // A made-up cookie is nobody.
    assert_eq!(get(&s, "/v1/admin/status", "tollgate_session=00").0, 401);
}

#[test]
fn no_admin_token_no_dashboard() {
    let scratch = prepare("ui-off", "1");
    let root = scratch.path();
    std::fs::remove_file(root.join("admin.token")).expect("remove");
    std::fs::write(root.join("tollgate.toml"), "").expect("config");
    let config = format!(
        "listen = \"127.0.0.1:0\"\nstate = \"state\"\n[[plugin]]\nname = \"hello\"\ncomponent = {:?}\nrequires = [\"demo\"]\n",
        test_guests::path("hello-licensed")
    );
    std::fs::write(root.join("tollgate.toml"), config).expect("config");
    let s = Server::spawn(
        root,
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate")),
        &[],
    )
    .expect("serves");
    assert_eq!(get(&s, "/ui/", "").0, 404);
    assert_eq!(get(&s, "/ui/login", "").0, 404);
}
