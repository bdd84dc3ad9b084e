//! Per-call limits, counted over the whole call: hand-written components
//! with several memories, instances, tables and resources, each within the
//! old per-memory or per-table checks but over the call's limits together.

use std::time::{Duration, Instant};
use tollgate::{Host, InvokeError, Limits, PluginSpec, ReclaimReason, Seats, Terms};

const SEAT: &str = "seat";

/// What a test component is made of, besides its main module and the module
/// that holds the memory its input and output pass through.
#[derive(Clone, Copy, Default)]
struct Shape {
    /// Modules with a memory of their own (one page), each grown by `fill`.
    fillers: usize,
    /// Modules with nothing in them, instantiated for their count alone.
    empties: usize,
    /// Modules with one table of `table_elements` elements.
    tables: usize,
    table_elements: u32,
    /// Resources of its own the call creates (and keeps).
    handles: u32,
}

/// A component that exports `tollgate:plugin/service.invoke`. Each call
/// takes a seat of license `seat` (and keeps it), creates `handles`
/// resources, then grows every filler memory one page at a time by the
/// number in the input's first byte (255: spins instead, holding its seat)
/// and returns the pages it grew in all, as a little-endian u32. A growth
/// that is refused traps, as a real allocator would.
fn component(shape: Shape) -> Vec<u8> {
    let Shape {
        fillers,
        empties,
        tables,
        table_elements,
        handles,
    } = shape;
    let mut instances = String::new();
    let mut imports = String::new();
    let mut fills = String::new();
    let mut with = String::new();
    for i in 0..fillers {
        instances.push_str(&format!("(core instance $f{i} (instantiate $filler))\n"));
        imports.push_str(&format!(
            "(import \"f{i}\" \"fill\" (func $f{i} (param i32) (result i32)))\n"
        ));
        fills.push_str(&format!(
            "(local.set $total (i32.add (local.get $total) (call $f{i} (local.get $pages))))\n"
        ));
        with.push_str(&format!("(with \"f{i}\" (instance $f{i}))\n"));
    }
    for _ in 0..empties {
        instances.push_str("(core instance (instantiate $empty))\n");
    }
    for _ in 0..tables {
        instances.push_str("(core instance (instantiate $tab))\n");
    }
    let wat = format!(
        r#"(component
  (import "tollgate:plugin/licensing@0.1.0" (instance $lic
    (export "lease" (type $lease (sub resource)))
    (type $err (variant (case "unknown-license") (case "exhausted") (case "expired")
                        (case "not-entitled") (case "timed-out") (case "revoked")))
    (export "license-error" (type $license-error (eq $err)))
    (export "acquire" (func (param "license-id" string)
                            (result (result (own $lease) (error $license-error)))))))
  (alias export $lic "acquire" (func $acquire))
  (type $r (resource (rep i32)))
  (core func $rnew (canon resource.new $r))
  (core module $mem
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $bump))
      (global.set $bump (i32.and (i32.add (i32.add (local.get $p) (local.get 3)) (i32.const 7))
                                 (i32.const -8)))
      (local.get $p))
    (data (i32.const 100) "seat"))
  (core instance $mem (instantiate $mem))
  (core func $acq (canon lower (func $acquire) (memory (core memory $mem "memory"))))
  (core module $filler
    (memory 1)
    (func (export "fill") (param $pages i32) (result i32)
      (local $i i32) (local $old i32)
      (block $done
        (loop $grow
          (br_if $done (i32.ge_u (local.get $i) (local.get $pages)))
          (local.set $old (memory.grow (i32.const 1)))
          (if (i32.eq (local.get $old) (i32.const -1)) (then unreachable))
          ;; touch the new page, so it is really used
          (i32.store8 (i32.mul (local.get $old) (i32.const 65536)) (i32.const 1))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $grow)))
      (local.get $i)))
  (core module $empty)
  (core module $tab (table {table_elements} funcref))
  {instances}
  (core module $main
    (import "env" "memory" (memory 1))
    (import "lic" "acquire" (func $acquire (param i32 i32 i32)))
    (import "r" "new" (func $rnew (param i32) (result i32)))
    {imports}
    (func (export "invoke") (param $ptr i32) (param $len i32) (result i32)
      (local $pages i32) (local $total i32) (local $h i32)
      (call $acquire (i32.const 100) (i32.const 4) (i32.const 200))
      (if (i32.load8_u (i32.const 200)) (then unreachable))
      (local.set $pages (i32.load8_u (local.get $ptr)))
      (if (i32.eq (local.get $pages) (i32.const 255)) (then (loop $spin (br $spin))))
      (block $made
        (loop $make
          (br_if $made (i32.ge_u (local.get $h) (i32.const {handles})))
          (drop (call $rnew (local.get $h)))
          (local.set $h (i32.add (local.get $h) (i32.const 1)))
          (br $make)))
      {fills}
      (i32.store (i32.const 304) (local.get $total))
      (i32.store8 (i32.const 288) (i32.const 0))
      (i32.store (i32.const 292) (i32.const 304))
      (i32.store (i32.const 296) (i32.const 4))
      (i32.const 288)))
  (core instance $lic-core (export "acquire" (func $acq)))
  (core instance $r-core (export "new" (func $rnew)))
  (core instance $main (instantiate $main
    (with "env" (instance $mem))
    (with "lic" (instance $lic-core))
    (with "r" (instance $r-core))
    {with}))
  (type $out (result (list u8) (error string)))
  (func $invoke (param "input" (list u8)) (result $out)
    (canon lift (core func $main "invoke") (memory (core memory $mem "memory"))
                (realloc (core func $mem "realloc"))))
  (instance $svc (export "invoke" (func $invoke)))
  (export "tollgate:plugin/service@0.1.0" (instance $svc)))"#
    );
    wat::parse_str(wat).expect("the test component is valid WAT")
}

fn host(seats: u32) -> Host {
    Host::builder()
        .license(SEAT, Terms::new(Seats::Counted(seats)))
        .build()
        .expect("host starts")
}

fn load(host: &Host, name: &str, shape: Shape, limits: Limits) {
    host.load_plugin(
        PluginSpec::bytes(name, component(shape))
            .requires(SEAT)
            .limits(limits),
    )
    .expect("component loads");
}

/// Every seat back, each checkout ended once.
fn assert_seat_returned(host: &Host) {
    let c = host.licenses().describe(SEAT).expect("seat").counters;
    assert_eq!(c.in_use, 0, "{c:?}");
    assert_eq!(c.checkouts, c.releases + c.reclaims.total(), "{c:?}");
}

fn pages(out: &[u8]) -> u32 {
    u32::from_le_bytes(out.try_into().expect("4 bytes of output"))
}

#[test]
fn the_memory_limit_counts_every_memory_of_a_call() {
    let host = host(1);
    let limits = Limits {
        memory_bytes: 4 << 20,
        ..Limits::default()
    };
    let fillers = Shape {
        fillers: 3,
        ..Shape::default()
    };
    load(&host, "fill", fillers, limits);
    // 3 memories of 1 + 16 pages each, and the 1-page main memory: 52
    // pages, 3.25 MiB, within 4 MiB together.
    let out = host.invoke("fill", &[16]).expect("within the limit");
    assert_eq!(pages(&out), 48);
    // 1 + 48 pages each: 3.06 MiB per memory, 9.25 MiB together.
    let err = host
        .invoke("fill", &[48])
        .expect_err("over the limit together");
    assert_eq!(
        err,
        InvokeError::MemoryLimit {
            plugin: "fill".into(),
            limit: 4 << 20
        }
    );
    let c = host.licenses().describe(SEAT).expect("seat").counters;
    assert_eq!(c.reclaims.get(ReclaimReason::Trapped), 1, "{c:?}");
    assert_seat_returned(&host);
    // The seat is free for the next call.
    assert!(host.invoke("fill", &[1]).is_ok());
}

/// Counts a component's core instances, memories, tables and table
/// elements go over the defaults with (each alone would pass the old
/// per-memory and per-table checks).
/// Checked as the call runs, on demand (a pooled host refuses a component
/// over the counts when it loads: see
/// `one_pooled_call_cannot_take_every_memory_slot`).
#[test]
fn instances_memories_tables_elements_and_resources_are_capped_per_call() {
    let host = Host::builder()
        .license(SEAT, Terms::new(Seats::Counted(1)))
        .allocator(tollgate::runtime::Allocator::OnDemand)
        .build()
        .expect("host starts");
    let cases = [
        (
            "instances",
            Shape {
                empties: 31, // + the main and memory modules: 33 > 32
                ..Shape::default()
            },
            "core instances",
            32,
        ),
        (
            "memories",
            Shape {
                fillers: 4, // + the main memory: 5 > 4
                ..Shape::default()
            },
            "memories",
            4,
        ),
        (
            "tables",
            Shape {
                tables: 9,
                table_elements: 1,
                ..Shape::default()
            },
            "tables",
            8,
        ),
        (
            "elements",
            Shape {
                tables: 4,
                table_elements: 300_000, // 1.2 million > 1,048,576 together
                ..Shape::default()
            },
            "table elements",
            1 << 20,
        ),
        (
            "handles",
            Shape {
                handles: 5000,
                ..Shape::default()
            },
            "resources",
            4096,
        ),
    ];
    for (name, shape, resource, limit) in cases {
        load(&host, name, shape, Limits::default());
        let err = host.invoke(name, &[0]).expect_err("over a per-call limit");
        assert_eq!(err.code(), "resource-limit", "{name}: {err}");
        assert_eq!(
            err.to_string(),
            format!(
                "plugin {name} needed more than its limit of {limit} {resource} per call and was stopped; raise the plugin's limit if it really needs more"
            )
        );
        assert_seat_returned(&host);
    }
    // The host's own resource table is capped too: with no room, even the
    // lease the call acquires has nowhere to go, and its seat comes back.
    let none = Limits {
        max_resources: 0,
        ..Limits::default()
    };
    load(&host, "no-room", Shape::default(), none);
    let err = host
        .invoke("no-room", &[0])
        .expect_err("no room for a lease");
    assert_eq!(err.code(), "resource-limit", "{err}");
    assert!(
        err.to_string().contains("its limit of 0 resources"),
        "{err}"
    );
    assert_seat_returned(&host);
    // Just within each limit, the same shapes run.
    let within = [
        Shape {
            empties: 30,
            ..Shape::default()
        },
        Shape {
            fillers: 3,
            ..Shape::default()
        },
        Shape {
            tables: 8,
            table_elements: 131_072,
            ..Shape::default()
        },
        Shape {
            handles: 4000,
            ..Shape::default()
        },
    ];
    for (i, shape) in within.into_iter().enumerate() {
        let name = format!("within{i}");
        load(&host, &name, shape, Limits::default());
        host.invoke(&name, &[0])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert_seat_returned(&host);
}

/// With the pooling allocator, a call takes at most its per-call share of
/// the slots: while one call with 4 memories runs, another still starts.
#[test]
fn one_pooled_call_cannot_take_every_memory_slot() {
    let host = Host::builder()
        .license(SEAT, Terms::new(Seats::Counted(2)))
        .allocator(tollgate::runtime::Allocator::pooling(
            2,
            [&Limits::default()],
        ))
        .build()
        .expect("host starts");
    let limits = Limits {
        time: Duration::from_secs(2),
        ..Limits::default()
    };
    let fillers = Shape {
        fillers: 3,
        ..Shape::default()
    };
    load(&host, "fill", fillers, limits);
    std::thread::scope(|s| {
        // Spins, holding a seat and 4 memories, until its time limit.
        let spinner = s.spawn(|| host.invoke("fill", &[255]));
        let deadline = Instant::now() + Duration::from_secs(30);
        while host
            .licenses()
            .describe(SEAT)
            .expect("seat")
            .counters
            .in_use
            == 0
        {
            assert!(Instant::now() < deadline, "the spinner never took its seat");
            std::thread::sleep(Duration::from_millis(1));
        }
        let out = host
            .invoke("fill", &[2])
            .expect("a second call gets slots of its own");
        assert_eq!(pages(&out), 6);
        let err = spinner.join().expect("spinner").expect_err("time limit");
        assert_eq!(err.code(), "time-limit");
    });
    assert_seat_returned(&host);
    // A component over the per-call counts is refused when it loads.
    let err = host
        .load_plugin(
            PluginSpec::bytes(
                "too-many",
                component(Shape {
                    fillers: 4,
                    ..Shape::default()
                }),
            )
            .requires(SEAT),
        )
        .expect_err("5 memories, over 4 per call");
    assert!(
        matches!(err, tollgate::LoadError::OverCallLimits { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("5 Wasm linear memories"), "{err}");
}

/// The library's default allocator is a pool, and a plugin whose memory
/// limit is larger than its slot is refused when it loads, saying how to
/// fix it, rather than failing in the middle of a call; on demand it loads.
#[test]
fn a_memory_limit_over_the_pool_slot_is_refused_at_load_with_the_fix() {
    let host = host(1);
    let slot = match host.allocator() {
        tollgate::runtime::Allocator::Pooling {
            max_memory_bytes, ..
        } => max_memory_bytes,
        other => panic!(
            "the default allocator is {other:?}: {:?}",
            host.allocator_fallback()
        ),
    };
    assert_eq!(slot, Limits::default().memory_bytes);
    let big = Limits {
        memory_bytes: 2 * slot,
        ..Limits::default()
    };
    let spec = PluginSpec::bytes("big", component(Shape::default()))
        .requires(SEAT)
        .limits(big);
    let err = host.load_plugin(spec.clone()).expect_err("over the slot");
    assert!(
        matches!(err, tollgate::LoadError::OverMemorySlot { limit, .. } if limit == 2 * slot),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("plugin big"), "{text}");
    assert!(text.contains("Allocator::OnDemand"), "{text}");
    assert!(host.status().plugins.is_empty());
    let on_demand = Host::builder()
        .license(SEAT, Terms::new(Seats::Counted(1)))
        .allocator(tollgate::runtime::Allocator::OnDemand)
        .build()
        .expect("host starts");
    on_demand.load_plugin(spec).expect("no slot to outgrow");
    assert_eq!(pages(&on_demand.invoke("big", &[1]).expect("call")), 0);
}

/// More calls at once than the pool has slots for: the extra ones wait for
/// a slot and all succeed, instead of failing to instantiate.
#[test]
fn calls_past_the_pool_wait_for_a_slot() {
    const CALLS: usize = 6;
    let host = Host::builder()
        .license(SEAT, Terms::new(Seats::Unlimited))
        .allocator(tollgate::runtime::Allocator::pooling(
            2,
            [&Limits::default()],
        ))
        .build()
        .expect("host starts");
    host.load_plugin(PluginSpec::file("slow", test_guests::path("slow")).requires(SEAT))
        .expect("slow loads");
    let started = std::sync::Barrier::new(CALLS);
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..CALLS)
            .map(|_| {
                s.spawn(|| {
                    started.wait();
                    host.invoke("slow", b"30")
                })
            })
            .collect();
        for call in calls {
            let out = call
                .join()
                .expect("caller")
                .expect("the call waits, then runs");
            assert_eq!(out, b"held 30ms, valid=true");
        }
    });
    let c = host.licenses().describe(SEAT).expect("seat").counters;
    assert_eq!((c.checkouts, c.in_use), (CALLS as u64, 0), "{c:?}");
}
