//! Alerts end to end: a threshold crossing is delivered once as a signed
//! webhook to a local receiver, retried after the receiver fails once, and
//! still delivered after a restart in between; `/metrics` and the admin API
//! show it.

use hmac::{Hmac, Mac};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

mod common;

use common::*;

const SECRET: &str = "webhook-secret-0123456789abcdef";

/// One request the receiver got: its headers (lower-case names) and body.
struct Delivery {
    headers: Vec<(String, String)>,
    body: String,
}

impl Delivery {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

/// Reads one request from `stream`, answers it with `status`, and hands
/// it back.
fn answer<S: Read + Write>(mut stream: S, status: &str) -> Option<Delivery> {
    let mut reader = BufReader::new(&mut stream);
    let mut headers = Vec::new();
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    drop(reader);
    stream
        .write_all(
            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    stream.flush().ok()?;
    Some(Delivery {
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    })
}

/// A webhook receiver on `listener` (over TLS with `tls`): answers 500 to
/// the first `failures` requests and 200 after, and hands every request to
/// the channel.
fn receiver_on(
    listener: TcpListener,
    failures: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> mpsc::Receiver<Delivery> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let status = if n < failures {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let delivery = match &tls {
                None => answer(stream, status),
                Some(config) => {
                    let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                        continue;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, stream);
                    let delivery = answer(&mut tls, status);
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                    delivery
                }
            };
            if let Some(delivery) = delivery
                && tx.send(delivery).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// A plain-HTTP webhook receiver; see [`receiver_on`].
fn receiver(listener: TcpListener, failures: usize) -> mpsc::Receiver<Delivery> {
    receiver_on(listener, failures, None)
}

/// The `[alerts]` section sending to `addr`, firing when demo's one seat
/// is in use.
fn alerts_config(addr: SocketAddr) -> String {
    format!(
        "[alerts]\nwebhook = \"http://{addr}/hook\"\nsecret_file = \"alerts.secret\"\n\
         [alerts.license.demo]\nin_use_percent = 100\n"
    )
}

fn start(root: &Path, addr: SocketAddr) -> Server {
    std::fs::write(root.join("alerts.secret"), SECRET).expect("secret");
    Server::start_with_plugins(root, "5s", "", &alerts_config(addr))
}

/// Checks the signature of `d` with an HMAC-SHA256 of its own.
fn assert_signed(d: &Delivery) {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(d.body.as_bytes());
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        d.header("tollgate-signature"),
        Some(want.as_str()),
        "{}",
        d.body
    );
}

fn next(rx: &mpsc::Receiver<Delivery>, what: &str) -> Delivery {
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("no webhook came: {what}"))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_crossing_is_sent_once_signed_and_retried_after_a_failure() {
    let scratch = prepare("alerts", "1");
    let root = scratch.path();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let rx = receiver(listener, 1);
    let s = start(root, addr);
    std::thread::scope(|scope| {
        let holder = scope.spawn(|| s.invoke("slow", b"3000"));
        let first = next(&rx, "the firing, first attempt");
        assert_signed(&first);
        let fired = first.json();
        assert_eq!(fired["type"], "tollgate.alert.firing", "{fired}");
        assert_eq!(
            (fired["alert"].as_str(), fired["license_id"].as_str()),
            (Some("in-use"), Some("demo"))
        );
        assert!(
            fired["detail"]
                .as_str()
                .is_some_and(|d| d.contains("1 of 1 seats in use")),
            "{fired}"
        );
        assert_eq!(
            s.metrics().value(
                "tollgate_alert_firing",
                &[("license", "demo"), ("alert", "in-use")]
            ),
            Some(1.0)
        );
        // The receiver failed: the same delivery comes again.
        let second = next(&rx, "the firing, retried");
        assert_signed(&second);
        assert_eq!(second.body, first.body);
        assert_eq!(
            second.header("tollgate-delivery"),
            first.header("tollgate-delivery")
        );
        assert_eq!(holder.join().expect("holder").0, 200);
    });
    // The seat is back: the alert resolves, sent once.
    let resolved = next(&rx, "the resolution");
    assert_signed(&resolved);
    assert_eq!(resolved.json()["type"], "tollgate.alert.resolved");
    assert_eq!(
        s.metrics().value(
            "tollgate_alert_firing",
            &[("license", "demo"), ("alert", "in-use")]
        ),
        Some(0.0)
    );
    let view = s.json("/v1/admin/alerts");
    assert_eq!(view["firing"].as_array().map(Vec::len), Some(0), "{view}");
    let deliveries = view["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 2, "{view}");
    assert_eq!(deliveries[1]["attempts"], 2, "{view}");
    assert!(
        deliveries.iter().all(|d| d["delivered_ms"].is_u64()),
        "{view}"
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(1500)).is_err(),
        "nothing sent twice"
    );
}

#[test]
fn a_crossing_queued_while_the_receiver_is_down_is_delivered_after_a_restart() {
    let scratch = prepare("alerts-restart", "1");
    let root = scratch.path();
    // A port nothing listens on until the receiver starts there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let s = start(root, addr);
    let url = format!("{}/v1/plugins/slow/invoke", s.base);
    // Holds the seat until the server is killed.
    let holder = std::thread::spawn(move || ureq::post(url).send("60000").map(drop));
    wait_for("a failed delivery attempt", || {
        let view = s.json("/v1/admin/alerts");
        view["deliveries"][0]["attempts"].as_u64().unwrap_or(0) >= 1
            && view["deliveries"][0]["delivered_ms"].is_null()
    });
    // Killed (SIGKILL) with the delivery still queued.
    drop(s);
    assert!(
        holder.join().expect("holder").is_err(),
        "the call died with the server"
    );
    let rx = receiver(TcpListener::bind(addr).expect("the port again"), 0);
    let s = start(root, addr);
    let firing = next(&rx, "the queued firing, after the restart");
    assert_signed(&firing);
    assert_eq!(firing.json()["type"], "tollgate.alert.firing");
    // The killed call's seat came back at the restart: the alert resolves.
    let resolved = next(&rx, "the resolution");
    assert_eq!(resolved.json()["type"], "tollgate.alert.resolved");
    assert_eq!(resolved.json()["since"], firing.json()["since"]);
    assert!(
        rx.recv_timeout(Duration::from_millis(1500)).is_err(),
        "the firing is not sent again"
    );
    drop(s);
}

/// An `https://` webhook whose certificate chains to the CA in `ca_file`
/// (not a public one): delivered over TLS, signed.
#[test]
fn an_https_webhook_is_delivered_with_its_own_ca() {
    let scratch = prepare("alerts-tls", "1");
    let root = scratch.path();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    std::fs::write(root.join("alerts-ca.pem"), ca.pem()).expect("CA file");
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let rx = receiver_on(listener, 0, Some(Arc::new(server)));
    std::fs::write(root.join("alerts.secret"), SECRET).expect("secret");
    let alerts = alerts_config(addr)
        .replace("http://", "https://")
        .replace("secret_file", "ca_file = \"alerts-ca.pem\"\nsecret_file");
    let s = Server::start_with_plugins(root, "5s", "", &alerts);
    std::thread::scope(|scope| {
        let holder = scope.spawn(|| s.invoke("slow", b"1500"));
        let fired = next(&rx, "the firing, over HTTPS");
        assert_signed(&fired);
        assert_eq!(fired.json()["type"], "tollgate.alert.firing");
        assert_eq!(holder.join().expect("holder").0, 200);
    });
}
