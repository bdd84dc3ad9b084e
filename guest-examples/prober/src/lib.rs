//! Rogue plugin: holds a license legitimately, then probes the sandbox — a
//! host file, the host's environment, a socket — and reports what it got.
//! Given a path as input it also reads that file and tries to write beside it.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

struct Prober;

fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "OPEN".to_string(),
        Err(e) => format!("denied ({:?})", e.kind()),
    }
}

impl Guest for Prober {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let ids = licensing::license_ids();
        let id = ids.first().ok_or("this host grants me no license id")?;
        let lease = licensing::acquire(id).map_err(|e| format!("acquire {id}: {e:?}"))?;
        println!("prober: probing the sandbox");
        eprintln!("prober: this line goes to stderr");
        let file = outcome(std::fs::read("/etc/passwd"));
        let dir = outcome(std::fs::read_dir("/"));
        let env = match std::env::vars().count() {
            0 => "empty".to_string(),
            n => format!("OPEN ({n} vars)"),
        };
        let socket = outcome(std::net::TcpStream::connect("127.0.0.1:9"));
        let mut report = format!("file: {file}\ndir: {dir}\nenv: {env}\nsocket: {socket}");
        // With input PATH: read it (a preopened file) and show the env.
        let path = String::from_utf8_lossy(&input).trim().to_string();
        if !path.is_empty() {
            let got = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("denied ({:?})", e.kind()));
            let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            let written = outcome(std::fs::write(format!("{path}.copy"), got.as_bytes()));
            report.push_str(&format!("\n{path}: {got}\nwrite: {written}\nvars: {}", vars.join(",")));
        }
        drop(lease);
        Ok(report.into_bytes())
    }
}

export!(Prober);
