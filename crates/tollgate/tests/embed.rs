//! An embedder's own store running plugins with tollgate's licensing linked
//! in, each call ended through the `LicensedCall` guard.

use std::sync::Arc;
use tollgate::license::ledger::{EventKind, Ledger, LedgerError, MemoryLedger, UsageEvent};
use tollgate::license::{CallLimits, Counters};
use tollgate::licensing::{self, CallEnd, LicensedCall, LicensingView, MissingLicense, Withheld};
use tollgate::{Host, Limits, ReclaimReason, Seats, Terms};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The embedder's store data: their WASI and table, tollgate's licensing.
struct Embedder {
    wasi: WasiCtx,
    table: ResourceTable,
    licensing: LicensedCall,
}

impl WasiView for Embedder {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The embedder's engine and linker, with WASI and tollgate's licensing.
struct Runner {
    engine: Engine,
    linker: Linker<Embedder>,
}

type Returned = Result<Vec<u8>, String>;

impl Runner {
    fn new() -> Self {
        let engine = Engine::default();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("WASI links");
        licensing::add_to_linker(&mut linker, |s: &mut Embedder| {
            LicensingView::new(&mut s.licensing, &mut s.table)
        })
        .expect("licensing links");
        Self { engine, linker }
    }

    /// Runs `invoke(input)` of `bytes` in a fresh store holding `call`, and
    /// hands back what the guest returned with the store (not yet ended).
    async fn run(
        &self,
        call: LicensedCall,
        bytes: &[u8],
        input: &[u8],
    ) -> (Returned, Store<Embedder>) {
        let component = Component::new(&self.engine, bytes).expect("component compiles");
        let state = Embedder {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            licensing: call,
        };
        let mut store = Store::new(&self.engine, state);
        let instance = self
            .linker
            .instantiate_async(&mut store, &component)
            .await
            .expect("instantiates");
        let service = instance
            .get_export_index(&mut store, None, "tollgate:plugin/service@0.1.0")
            .expect("exports the service");
        let invoke = instance
            .get_export_index(&mut store, Some(&service), "invoke")
            .expect("service has invoke");
        let invoke = instance
            .get_typed_func::<(&[u8],), (Returned,)>(&mut store, &invoke)
            .expect("invoke has the WIT type");
        let (returned,) = invoke
            .call_async(&mut store, (input,))
            .await
            .expect("does not trap");
        (returned, store)
    }
}

fn host(ledger: Arc<dyn Ledger>) -> Host {
    Host::builder()
        .license("demo", Terms::new(Seats::Counted(1)))
        .ledger(ledger)
        .build()
        .expect("host starts")
}

fn open(host: &Host, plugin: &str, bytes: &[u8]) -> LicensedCall {
    host.open_call(
        plugin,
        bytes,
        &["demo"],
        CallLimits::from(&Limits::default()),
    )
    .expect("call opens")
}

fn demo(host: &Host) -> Counters {
    host.licenses()
        .describe("demo")
        .expect("demo installed")
        .counters
}

/// Every lease came back once, every seat went back once, none is held.
fn assert_balanced(c: &Counters) {
    assert_eq!(c.checkouts, c.releases + c.reclaims.total(), "{c:?}");
    assert_eq!(c.checkouts - c.retakes, c.returns.total(), "{c:?}");
    assert_eq!(c.in_use, 0, "{c:?}");
}

fn kinds(ledger: &MemoryLedger) -> Vec<EventKind> {
    ledger.events().iter().map(|e| e.kind).collect()
}

#[tokio::test]
async fn licensed_output_is_delivered_and_the_seat_returns() {
    let ledger = Arc::new(MemoryLedger::default());
    let host = host(ledger.clone());
    let runner = Runner::new();
    let bytes = test_guests::bytes::HELLO_LICENSED;
    let (returned, store) = runner
        .run(open(&host, "hello", bytes), bytes, b"world")
        .await;
    // The seat lingers with the call until it ends.
    assert_eq!(demo(&host).in_use, 1);

    let output = store
        .into_data()
        .licensing
        .finish_async(returned)
        .await
        .expect("licensed call is delivered")
        .expect("plugin succeeds");
    assert_eq!(
        String::from_utf8_lossy(&output),
        "hello, world! (licensed by demo)"
    );
    let c = demo(&host);
    assert_eq!((c.checkouts, c.releases, c.withheld), (1, 1, 0));
    assert_eq!(c.returns.get(ReclaimReason::InvocationEnded), 1);
    assert_balanced(&c);
    assert_eq!(
        kinds(&ledger),
        [
            EventKind::Checkout,
            EventKind::Release,
            EventKind::Return(ReclaimReason::InvocationEnded)
        ]
    );
    let per_plugin = host.licenses().describe("demo").expect("demo").per_plugin;
    assert_eq!(per_plugin.get("hello").map(|c| c.checkouts), Some(1));
}

#[tokio::test]
async fn a_call_without_its_license_is_withheld_by_the_guard() {
    let ledger = Arc::new(MemoryLedger::default());
    let host = host(ledger.clone());
    let runner = Runner::new();
    let bytes = test_guests::bytes::NO_LICENSE;
    let call = open(&host, "freeloader", bytes);
    let invocation = call.holder().invocation;
    let (returned, store) = runner.run(call, bytes, b"abc").await;
    // The guest did its work; its output must not get out.
    assert_eq!(returned, Ok(b"cba".to_vec()));

    let ended = store.into_data().licensing.end(CallEnd::Returned(returned));
    let missing = [MissingLicense {
        id: "demo".into(),
        denial: None,
        lapsed: false,
    }];
    assert_eq!(ended.withheld(), Some(&missing[..]));
    let err = ended.commit_async().await.expect_err("withheld");
    assert!(
        matches!(&err, Withheld::Unlicensed { invocation: i, missing: m } if *i == invocation && m[..] == missing),
        "{err:?}"
    );
    assert_eq!(err.code(), "unlicensed");
    assert!(!err.to_string().contains("cba"), "{err}");
    let c = demo(&host);
    assert_eq!((c.checkouts, c.withheld), (0, 1));
    assert_balanced(&c);
    assert_eq!(kinds(&ledger), [EventKind::Withheld]);
}

#[tokio::test]
async fn leases_still_open_are_reclaimed_when_the_call_ends() {
    let host = host(Arc::new(MemoryLedger::default()));
    let runner = Runner::new();
    let bytes = test_guests::bytes::LEAKER;
    let (returned, store) = runner.run(open(&host, "leaker", bytes), bytes, b"").await;
    // One seat: the second request is refused, the first lease kept.
    assert_eq!(returned, Ok(b"kept 1 lease(s)".to_vec()));
    let output = store
        .into_data()
        .licensing
        .finish_async(returned)
        .await
        .expect("held its seat to the end");
    assert_eq!(output, Ok(b"kept 1 lease(s)".to_vec()));
    let c = demo(&host);
    assert_eq!(c.reclaims.get(ReclaimReason::InvocationEnded), 1);
    assert_eq!(c.releases, 0);
    assert_balanced(&c);
}

#[tokio::test]
async fn a_stopped_call_gets_its_report_and_its_leases_reclaimed_for_the_reason() {
    let host = host(Arc::new(MemoryLedger::default()));
    let runner = Runner::new();
    let bytes = test_guests::bytes::LEAKER;
    let (_, store) = runner.run(open(&host, "leaker", bytes), bytes, b"").await;
    let stopped = CallEnd::Stopped {
        reason: ReclaimReason::TimedOut,
        report: "stopped by the embedder",
    };
    let report = store.into_data().licensing.end(stopped).commit();
    assert_eq!(report.ok(), Some("stopped by the embedder"));
    let c = demo(&host);
    assert_eq!(c.reclaims.get(ReclaimReason::TimedOut), 1);
    assert_eq!(c.returns.get(ReclaimReason::TimedOut), 1);
    assert_balanced(&c);
}

#[tokio::test]
async fn dropping_the_call_unended_returns_its_seat_as_store_dropped() {
    let host = host(Arc::new(MemoryLedger::default()));
    let runner = Runner::new();
    let bytes = test_guests::bytes::LEAKER;
    let (_, store) = runner.run(open(&host, "leaker", bytes), bytes, b"").await;
    assert_eq!(demo(&host).in_use, 1);
    drop(store);
    let c = demo(&host);
    assert_eq!(c.reclaims.get(ReclaimReason::StoreDropped), 1);
    assert_eq!(c.returns.get(ReclaimReason::StoreDropped), 1);
    assert_eq!(c.withheld, 0);
    assert_balanced(&c);
}

/// Records like a memory ledger, but can never make anything durable.
#[derive(Default)]
struct UnsyncedLedger(MemoryLedger);

impl Ledger for UnsyncedLedger {
    fn record(&self, event: UsageEvent) {
        self.0.record(event);
    }

    fn sync(&self) -> Result<(), LedgerError> {
        Err(LedgerError::store(
            "commit",
            std::io::Error::other("the disk is full"),
        ))
    }
}

#[tokio::test]
async fn an_answer_whose_usage_is_not_durable_is_withheld() {
    let host = host(Arc::new(UnsyncedLedger::default()));
    let runner = Runner::new();
    let bytes = test_guests::bytes::HELLO_LICENSED;
    let call = open(&host, "hello", bytes);
    let invocation = call.holder().invocation;
    let (returned, store) = runner.run(call, bytes, b"world").await;
    assert!(returned.is_ok(), "{returned:?}");
    let err = store
        .into_data()
        .licensing
        .finish_async(returned)
        .await
        .expect_err("not acknowledged");
    assert!(
        matches!(&err, Withheld::NotRecorded { invocation: i, .. } if *i == invocation),
        "{err:?}"
    );
    let mut causes = Vec::new();
    let mut cause: Option<&dyn std::error::Error> = Some(&err);
    while let Some(c) = cause {
        causes.push(c.to_string());
        cause = c.source();
    }
    assert_eq!(
        causes,
        [
            format!(
                "the usage of call {invocation} could not be recorded, so its result is withheld"
            ),
            "the usage ledger could not commit".to_string(),
            "the disk is full".to_string(),
        ]
    );
    assert_eq!(err.code(), "ledger-unavailable");
    // The seat came back all the same.
    assert_balanced(&demo(&host));
}

#[test]
fn open_call_refuses_a_bad_plugin_name_or_license_id() {
    let host = host(Arc::new(MemoryLedger::default()));
    let limits = CallLimits::from(&Limits::default());
    let err = host
        .open_call("Not A Name", b"", &["demo"], limits)
        .expect_err("bad name");
    assert!(err.to_string().contains("Not A Name"), "{err}");
    let err = host
        .open_call("ok", b"", &["no spaces allowed"], limits)
        .expect_err("bad id");
    assert!(err.to_string().contains("no spaces allowed"), "{err}");
}

/// Records like a memory ledger, and logs what each call told it: that it
/// started, asked for its commit, or was abandoned.
#[derive(Default)]
struct AnnouncedLedger {
    rows: MemoryLedger,
    log: std::sync::Mutex<Vec<String>>,
}

impl AnnouncedLedger {
    fn note(&self, what: &str, invocation: u64) {
        self.log
            .lock()
            .expect("log")
            .push(format!("{what} {invocation}"));
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl Ledger for AnnouncedLedger {
    fn record(&self, event: UsageEvent) {
        self.rows.record(event);
    }

    fn sync_invocation(&self, invocation: u64) -> Result<(), LedgerError> {
        self.note("asked", invocation);
        Ok(())
    }

    fn sync_invocation_async(&self, invocation: u64) -> tollgate::license::ledger::SyncFuture<'_> {
        self.note("asked", invocation);
        Box::pin(std::future::ready(Ok(())))
    }

    fn call_started(&self, invocation: u64) {
        self.note("started", invocation);
    }

    fn call_abandoned(&self, invocation: u64) {
        self.note("abandoned", invocation);
    }
}

#[tokio::test]
async fn every_call_tells_the_ledger_it_started_and_then_asks_or_is_abandoned() {
    // The ledger holds a group commit back for calls that said they started
    // and have not asked yet, so each must end one way or the other.
    let ledger = Arc::new(AnnouncedLedger::default());
    let host = host(ledger.clone());
    let runner = Runner::new();
    let bytes = test_guests::bytes::HELLO_LICENSED;
    // Ended and committed: it asks, once.
    let call = open(&host, "hello", bytes);
    let first = call.holder().invocation;
    let (returned, store) = runner.run(call, bytes, b"world").await;
    let answer = store.into_data().licensing.finish_async(returned).await;
    assert!(answer.is_ok(), "{answer:?}");
    // The store dropped with the call unended: abandoned.
    let call = open(&host, "hello", bytes);
    let second = call.holder().invocation;
    drop(runner.run(call, bytes, b"world").await);
    // Ended, but the answer dropped without its commit: abandoned.
    let call = open(&host, "hello", bytes);
    let third = call.holder().invocation;
    let (returned, store) = runner.run(call, bytes, b"world").await;
    drop(store.into_data().licensing.end(CallEnd::Returned(returned)));
    // Ended and committed through the blocking form.
    let call = open(&host, "hello", bytes);
    let fourth = call.holder().invocation;
    let (returned, store) = runner.run(call, bytes, b"world").await;
    let ended = store.into_data().licensing.end(CallEnd::Returned(returned));
    let answer = tokio::task::spawn_blocking(move || ended.commit())
        .await
        .expect("joins");
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(
        ledger.log(),
        [
            format!("started {first}"),
            format!("asked {first}"),
            format!("started {second}"),
            format!("abandoned {second}"),
            format!("started {third}"),
            format!("abandoned {third}"),
            format!("started {fourth}"),
            format!("asked {fourth}"),
        ]
    );
    assert_balanced(&demo(&host));
}
