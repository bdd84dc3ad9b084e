//! `tollgate serve`: a withheld call's bytes reach neither the HTTP client
//! nor the server's default (info) log; clients get a fixed message per
//! error code, with no trap text or function names; a licensed call's error
//! string is bounded by `max_response_bytes`.

mod common;

use common::*;

const SECRET: &str = "SECRET-7f3a9c";
const FUNCTION: &str = "secret_function_7f3a9c";

#[test]
fn withheld_calls_and_traps_leak_nothing_over_http_or_to_the_log() {
    let scratch = prepare("leaks", "1");
    let root = scratch.path();
    let blabber = format!(
        "[[plugin]]\nname = \"blabber\"\ncomponent = \"{}\"\nrequires = [\"demo\"]\nmax_response_bytes = \"1KiB\"\n",
        guest("blabber").to_string_lossy()
    );
    let s = Server::start_with(root, "5s", &blabber);
    let mut bodies = String::new();
    for (action, status, want) in [
        ("print", 403, "unlicensed"),
        ("err:100", 403, "unlicensed"),
        ("err:5000", 403, "unlicensed"),
        ("trap", 500, "plugin-trap"),
        ("panic", 500, "plugin-trap"),
        ("licensed trap", 500, "plugin-trap"),
        ("licensed err:5000", 500, "response-too-large"),
    ] {
        let (st, body, _) = s.invoke("blabber", action.as_bytes());
        assert_eq!(
            (st, code(&body).as_str()),
            (status, want),
            "{action}: {body}"
        );
        assert!(!body.contains(SECRET), "{action}: {body}");
        assert!(!body.contains(FUNCTION), "{action}: {body}");
        bodies.push_str(&body);
    }
    // A trap's message is the same whatever the plugin did.
    let (_, trap, _) = s.invoke("blabber", b"trap");
    let (_, panic, _) = s.invoke("blabber", b"licensed panic");
    assert_eq!(trap, panic);
    // A licensed call's error string within the limit is its answer.
    let (st, body, _) = s.invoke("blabber", b"licensed err:20");
    assert_eq!((st, code(&body).as_str()), (422, "plugin-error"), "{body}");
    assert!(body.contains("SECRET-7f3a9c-blabbe"), "{body}");
    assert_eq!(s.terminate().code(), Some(0));
    let log = std::fs::read_to_string(root.join("serve.log")).expect("serve log");
    assert!(
        log.contains("\"plugin\":\"blabber\""),
        "the calls were logged: {log}"
    );
    assert!(!log.contains(SECRET), "{log}");
    assert!(!log.contains(FUNCTION), "{log}");
}
