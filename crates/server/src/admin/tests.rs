//! The admin routes read their input with the functions the fuzzer calls
//! through [`parse_admin_body`]: every input of the `admin_body` fuzz corpus
//! that the parser refuses gets that very refusal over HTTP.

use super::*;
use crate::config::Config;
use axum::http::{Method, Uri};
use http_body_util::BodyExt;
use tollgate::Host;
use tollgate::Limits;
use tollgate::runtime::ComponentSource;
use tower::ServiceExt;

const TOKEN: &str = "admin-token-of-the-route-tests";

/// The inputs of the `admin_body` fuzz corpus, as the fuzz target splits
/// them: the first byte picks the route, the rest is its input.
fn corpus() -> Vec<(String, AdminBody, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/admin_body");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            let (&route, input) = bytes.split_first()?;
            let kind = match route % 3 {
                0 => AdminBody::License,
                1 => AdminBody::LoadPlugin,
                _ => AdminBody::UsageQuery,
            };
            Some((path.display().to_string(), kind, input.to_vec()))
        })
        .collect();
    inputs.sort_by(|a, b| a.0.cmp(&b.0));
    inputs
}

/// The request that hands `input` to the route `kind`; `None` for a usage
/// query no request line can carry unchanged.
fn request(kind: AdminBody, input: &[u8]) -> Option<axum::http::Request<Body>> {
    let (method, uri, body) = match kind {
        AdminBody::License => (Method::POST, "/v1/admin/licenses".to_string(), input),
        AdminBody::LoadPlugin => (Method::POST, "/v1/admin/plugins".to_string(), input),
        AdminBody::UsageQuery => {
            let query = std::str::from_utf8(input).ok()?;
            let uri = format!("/v1/admin/usage?{query}");
            let parsed: Uri = uri.parse().ok()?;
            (parsed.query() == Some(query)).then_some((Method::GET, uri, &[][..]))?
        }
    };
    Some(
        axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "localhost")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from(body.to_vec()))
            .expect("request"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_refuse_bad_input_in_the_words_of_the_fuzzed_parsers() {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-admin-routes-")
        .tempdir()
        .expect("scratch dir");
    let host = Host::builder()
        .state(dir.path().join("state"))
        .build()
        .expect("host starts");
    let mut config = Config::parse("", &dir.path().join("tollgate.toml")).expect("an empty config");
    config.admin_token = Some(TOKEN.to_string());
    let app = crate::router(Arc::new(Server::new(Arc::new(host), &config)));

    // A body that is not UTF-8 is refused by the parser's first step.
    let mut cases = corpus();
    cases.push(("not UTF-8".into(), AdminBody::License, b"\xff\xfe".to_vec()));
    let mut sent = std::collections::HashMap::new();
    for (name, kind, input) in cases {
        let Err(refusal) = parse_admin_body(kind, &input) else {
            continue;
        };
        let Some(request) = request(kind, &input) else {
            continue;
        };
        let response = app.clone().oneshot(request).await.expect("answered");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error");
        assert_eq!(
            (status, body),
            (
                StatusCode::BAD_REQUEST,
                json!({ "error": "bad-request", "message": refusal })
            ),
            "{name} ({kind:?})"
        );
        *sent.entry(kind).or_insert(0) += 1;
    }
    for kind in [
        AdminBody::License,
        AdminBody::LoadPlugin,
        AdminBody::UsageQuery,
    ] {
        assert!(
            sent.get(&kind).copied().unwrap_or(0) >= 5,
            "too few refused {kind:?} inputs reached their route: {sent:?}"
        );
    }
}

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
