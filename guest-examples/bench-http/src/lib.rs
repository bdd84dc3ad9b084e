//! Benchmark reference for `wasmtime serve`: a `wasi:http` handler doing the
//! same work as `bench-bare` and `bench-leased` (read the request body, hash
//! it, answer the hex digest), so case G' compares hosts, not guests.

use std::io::{Read as _, Write as _};
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

include!("../../bench_work.rs");

struct BenchHttp;

impl wasip2::exports::http::incoming_handler::Guest for BenchHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let mut input = Vec::new();
        let read = request.consume().ok().and_then(|body| {
            let mut stream = body.stream().ok()?;
            stream.read_to_end(&mut input).ok()?;
            drop(stream);
            drop(body);
            Some(())
        });
        let response = OutgoingResponse::new(Fields::new());
        if read.is_none() {
            let _ = response.set_status_code(400);
        }
        let Ok(body) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        if read.is_some()
            && let Ok(mut out) = body.write()
        {
            let _ = out.write_all(&work(&input, rounds(&input)));
            let _ = out.flush();
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

wasip2::http::proxy::export!(BenchHttp with_types_in wasip2);
