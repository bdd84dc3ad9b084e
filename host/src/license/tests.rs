//! Unit tests of the license core; no WebAssembly involved.

use super::*;
use crate::ledger::MemoryLedger;
use proptest::prelude::*;
use std::sync::Barrier;
use std::thread;

fn holder(plugin: &str, invocation: u64) -> Holder {
    Holder {
        plugin: plugin.into(),
        component_digest: "digest".into(),
        invocation,
    }
}

fn manager_with(ledger: Arc<MemoryLedger>, clock: Arc<dyn Clock>) -> LicenseManager {
    LicenseManager::new(ledger, clock)
}

fn counted(m: &LicenseManager, id: &str, seats: u32) {
    m.install(id, Terms::new(Seats::Counted(seats)))
        .expect("valid id");
}

fn all() -> Entitlement {
    Entitlement::to(["a", "b", "c"])
}

#[test]
fn acquire_release_counts() {
    let m = LicenseManager::default();
    counted(&m, "a", 2);
    let h = holder("p", 1);
    let l1 = m.acquire(&h, &all(), "a", None).expect("seat 1");
    let l2 = m.acquire(&h, &all(), "a", None).expect("seat 2");
    assert_eq!(
        m.acquire(&h, &all(), "a", None).err(),
        Some(Denial::Exhausted)
    );
    assert_ne!(l1.id(), l2.id());
    assert!(l1.release().valid);
    assert!(l2.reclaim(ReclaimReason::Trapped).valid);
    let s = m.describe("a").expect("installed");
    assert_eq!(s.counters.in_use, 0);
    assert_eq!(s.counters.peak, 2);
    assert_eq!(s.counters.checkouts, 2);
    assert_eq!(s.counters.releases, 1);
    assert_eq!(s.counters.reclaims.get(ReclaimReason::Trapped), 1);
    assert_eq!(s.counters.denials.get(Denial::Exhausted), 1);
    assert!(s.counters.balanced());
    assert_eq!(s.per_plugin["p"], s.counters);
}

#[test]
fn dropped_lease_is_reclaimed_as_store_dropped() {
    let m = LicenseManager::default();
    counted(&m, "a", 1);
    drop(m.acquire(&holder("p", 1), &all(), "a", None).expect("seat"));
    let s = m.describe("a").expect("installed");
    assert_eq!(s.counters.reclaims.get(ReclaimReason::StoreDropped), 1);
    assert!(s.counters.balanced());
    assert!(
        m.acquire(&holder("p", 2), &all(), "a", None).is_ok(),
        "seat came back"
    );
}

#[test]
fn unlimited_license_never_exhausts_but_counts() {
    let m = LicenseManager::default();
    m.install("a", Terms::new(Seats::Unlimited)).expect("valid");
    let leases: Vec<Lease> = (0..500)
        .map(|i| m.acquire(&holder("p", i), &all(), "a", None).expect("seat"))
        .collect();
    assert_eq!(m.describe("a").expect("installed").counters.in_use, 500);
    for l in leases {
        l.release();
    }
    let s = m.describe("a").expect("installed");
    assert_eq!(
        (s.counters.checkouts, s.counters.releases, s.counters.peak),
        (500, 500, 500)
    );
}

#[test]
fn unknown_and_not_entitled_are_refused_and_counted() {
    let m = LicenseManager::default();
    counted(&m, "a", 1);
    let h = holder("p", 1);
    assert_eq!(
        m.acquire(&h, &all(), "zzz", None).err(),
        Some(Denial::UnknownLicense)
    );
    assert_eq!(
        m.acquire(&h, &Entitlement::to(["b"]), "a", None).err(),
        Some(Denial::NotEntitled)
    );
    assert_eq!(m.status().unknown_license_denials, 1);
    let s = m.describe("a").expect("installed");
    assert_eq!(s.counters.denials.get(Denial::NotEntitled), 1);
    assert_eq!(s.counters.checkouts, 0);
}

#[test]
fn validity_window_refuses_and_invalidates() {
    let clock = Arc::new(ManualClock::at_secs(1_000));
    let m = manager_with(Arc::new(MemoryLedger::default()), clock.clone());
    m.install(
        "a",
        Terms {
            not_before: Some(900),
            expires_at: Some(1_100),
            ..Terms::new(Seats::Counted(2))
        },
    )
    .expect("valid");
    m.install(
        "b",
        Terms {
            not_before: Some(2_000),
            ..Terms::new(Seats::Counted(1))
        },
    )
    .expect("valid");
    let h = holder("p", 1);
    assert_eq!(
        m.acquire(&h, &all(), "b", None).err(),
        Some(Denial::Expired),
        "not yet valid"
    );
    let lease = m.acquire(&h, &all(), "a", None).expect("in window");
    assert!(lease.is_valid());
    clock.set_secs(1_101);
    assert!(!lease.is_valid(), "expired while held");
    assert!(!lease.release().valid);
    assert_eq!(
        m.acquire(&h, &all(), "a", None).err(),
        Some(Denial::Expired)
    );
    assert_eq!(
        m.describe("a")
            .expect("installed")
            .counters
            .denials
            .get(Denial::Expired),
        1
    );
}

#[test]
fn revoke_reclaims_held_leases_once() {
    let m = LicenseManager::default();
    counted(&m, "a", 3);
    let h = holder("p", 1);
    let l1 = m.acquire(&h, &all(), "a", None).expect("seat");
    let l2 = m.acquire(&h, &all(), "a", None).expect("seat");
    assert_eq!(m.revoke("a"), Ok(2));
    assert!(!l1.is_valid());
    assert!(!l1.release().valid, "a revoked lease ends invalid");
    drop(l2);
    assert_eq!(
        m.acquire(&h, &all(), "a", None).err(),
        Some(Denial::Revoked)
    );
    let s = m.describe("a").expect("installed");
    assert_eq!(s.counters.reclaims.get(ReclaimReason::Revoked), 2);
    assert_eq!(s.counters.releases, 0, "nothing counted twice");
    assert!(s.counters.balanced());
    assert_eq!(m.revoke("nope"), Err(LicenseError::Unknown("nope".into())));
    m.install("a", Terms::new(Seats::Counted(1)))
        .expect("reinstall");
    assert!(
        m.acquire(&h, &all(), "a", None).is_ok(),
        "reinstall lifts the revocation"
    );
}

#[test]
fn plugin_rules_refuse_other_plugins() {
    let m = LicenseManager::default();
    let digest = "ab".repeat(32);
    let rule = vec!["hello".to_string(), format!("sha256:{digest}")];
    m.install(
        "a",
        Terms {
            plugins: rule,
            ..Terms::new(Seats::Counted(5))
        },
    )
    .expect("valid");
    let by_name = holder("hello", 1);
    let by_digest = Holder {
        plugin: "renamed".into(),
        component_digest: digest.into(),
        invocation: 2,
    };
    let stranger = holder("stranger", 3);
    assert!(m.acquire(&by_name, &all(), "a", None).is_ok());
    assert!(m.acquire(&by_digest, &all(), "a", None).is_ok());
    assert_eq!(
        m.acquire(&stranger, &all(), "a", None).err(),
        Some(Denial::NotEntitled)
    );
    let s = m.describe("a").expect("installed");
    assert_eq!(s.per_plugin["stranger"].denials.get(Denial::NotEntitled), 1);
}

#[test]
fn operator_rules_include_exclude_reserve_and_cap() {
    let m = LicenseManager::default();
    counted(&m, "a", 4);
    let rules = Rules {
        include: vec!["vip".into(), "std".into(), "rogue".into()],
        exclude: vec!["rogue".into()],
        reserve: [("vip".to_string(), 2)].into_iter().collect(),
        max_per_plugin: Some(3),
    };
    m.set_rules("a", rules).expect("installed");
    let (vip, std_, rogue, other) = (
        holder("vip", 1),
        holder("std", 2),
        holder("rogue", 3),
        holder("other", 4),
    );
    assert_eq!(
        m.acquire(&rogue, &all(), "a", None).err(),
        Some(Denial::NotEntitled),
        "excluded"
    );
    assert_eq!(
        m.acquire(&other, &all(), "a", None).err(),
        Some(Denial::NotEntitled),
        "not included"
    );
    // Two of four seats are held back for vip: std gets two, then none.
    let s1 = m.acquire(&std_, &all(), "a", None).expect("std 1");
    let s2 = m.acquire(&std_, &all(), "a", None).expect("std 2");
    assert_eq!(
        m.acquire(&std_, &all(), "a", None).err(),
        Some(Denial::Exhausted),
        "reserved for vip"
    );
    let v1 = m.acquire(&vip, &all(), "a", None).expect("vip 1");
    let v2 = m.acquire(&vip, &all(), "a", None).expect("vip 2");
    assert_eq!(
        m.acquire(&vip, &all(), "a", None).err(),
        Some(Denial::Exhausted),
        "all four in use"
    );
    drop((s1, s2));
    let v3 = m.acquire(&vip, &all(), "a", None).expect("vip 3");
    assert_eq!(
        m.acquire(&vip, &all(), "a", None).err(),
        Some(Denial::Exhausted),
        "max 3 per plugin"
    );
    let s3 = m
        .acquire(&std_, &all(), "a", None)
        .expect("the last free seat");
    drop((v1, v2, v3, s3));
    assert!(m.describe("a").expect("installed").counters.balanced());
}

#[test]
fn a_waiter_that_cannot_be_served_does_not_block_one_that_can() {
    let m = Arc::new(LicenseManager::default());
    counted(&m, "a", 2);
    m.set_rules(
        "a",
        Rules {
            max_per_plugin: Some(1),
            ..Rules::default()
        },
    )
    .expect("installed");
    let held_by_p = m
        .acquire(&holder("p", 1), &all(), "a", None)
        .expect("p holds its one");
    let held_by_q = m
        .acquire(&holder("q", 2), &all(), "a", None)
        .expect("q holds the other");
    // p waits first but may hold only one; q's waiter is served when q's seat frees.
    let (mp, mq) = (m.clone(), m.clone());
    let p_waiter = thread::spawn(move || {
        mp.acquire(
            &holder("p", 3),
            &all(),
            "a",
            Some(Duration::from_millis(300)),
        )
        .err()
    });
    while m.describe("a").expect("installed").waiting < 1 {
        thread::yield_now();
    }
    let q_waiter = thread::spawn(move || {
        mq.acquire(&holder("q", 4), &all(), "a", Some(Duration::from_secs(30)))
            .map(|l| l.release())
    });
    while m.describe("a").expect("installed").waiting < 2 {
        thread::yield_now();
    }
    held_by_q.release();
    assert!(
        q_waiter.join().expect("q").is_ok(),
        "q served although p waited first"
    );
    assert_eq!(p_waiter.join().expect("p"), Some(Denial::TimedOut));
    held_by_p.release();
    assert!(m.describe("a").expect("installed").counters.balanced());
}

#[test]
fn ids_are_validated() {
    let m = LicenseManager::default();
    assert!(m.install("", Terms::new(Seats::Unlimited)).is_err());
    assert!(
        m.install("has space", Terms::new(Seats::Unlimited))
            .is_err()
    );
    assert!(
        m.install(&"x".repeat(129), Terms::new(Seats::Unlimited))
            .is_err()
    );
    assert!(
        m.install("acme:pro-2.1_x", Terms::new(Seats::Unlimited))
            .is_ok()
    );
}

#[test]
fn ids_for_lists_entitled_installed_ids() {
    let m = LicenseManager::default();
    counted(&m, "b", 1);
    counted(&m, "a", 1);
    counted(&m, "x", 1);
    assert_eq!(
        m.ids_for(&Entitlement::to(["b", "a", "missing"])),
        vec!["a", "b"]
    );
    assert_eq!(m.ids(), vec!["a", "b", "x"]);
}

#[test]
fn ledger_holds_every_event_in_order() {
    let ledger = Arc::new(MemoryLedger::default());
    let m = manager_with(ledger.clone(), Arc::new(SystemClock));
    counted(&m, "a", 1);
    let h = holder("p", 7);
    let lease = m.acquire(&h, &all(), "a", None).expect("seat");
    let lease_id = lease.id();
    let _ = m.acquire(&h, &all(), "a", None);
    lease.release();
    m.record_withheld(&h, "a");
    let kinds: Vec<EventKind> = ledger.events().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Checkout,
            EventKind::Denial(Denial::Exhausted),
            EventKind::Release,
            EventKind::Withheld
        ]
    );
    let events = ledger.events();
    assert_eq!(events[0].lease_id, Some(lease_id));
    assert_eq!(events[2].lease_id, Some(lease_id));
    assert!(
        events
            .iter()
            .all(|e| e.invocation_id == 7 && &*e.plugin == "p")
    );
    assert_eq!(m.describe("a").expect("installed").counters.withheld, 1);
}

#[test]
fn waiters_are_served_in_fifo_order() {
    let m = Arc::new(LicenseManager::default());
    counted(&m, "a", 1);
    let first = m.acquire(&holder("p", 0), &all(), "a", None).expect("seat");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 1..=4u64 {
        // Queue them one after another so their FIFO order is known.
        while m.describe("a").expect("installed").waiting < (i - 1) as usize {
            thread::yield_now();
        }
        let (m, order) = (m.clone(), order.clone());
        handles.push(thread::spawn(move || {
            let lease = m
                .acquire(&holder("p", i), &all(), "a", Some(Duration::from_secs(30)))
                .expect("served before the wait ends");
            order.lock().expect("lock").push(i);
            lease.release();
        }));
    }
    while m.describe("a").expect("installed").waiting < 4 {
        thread::yield_now();
    }
    // A newcomer without a wait may not jump the queue.
    assert_eq!(
        m.acquire(&holder("q", 9), &all(), "a", None).err(),
        Some(Denial::Exhausted)
    );
    first.release();
    for h in handles {
        h.join().expect("waiter");
    }
    assert_eq!(*order.lock().expect("lock"), vec![1, 2, 3, 4]);
    assert!(m.describe("a").expect("installed").counters.balanced());
}

#[test]
fn wait_times_out_and_revoke_wakes_waiters() {
    let m = Arc::new(LicenseManager::default());
    counted(&m, "a", 1);
    let held = m.acquire(&holder("p", 0), &all(), "a", None).expect("seat");
    let err = m
        .acquire(
            &holder("p", 1),
            &all(),
            "a",
            Some(Duration::from_millis(30)),
        )
        .err();
    assert_eq!(err, Some(Denial::TimedOut));
    assert_eq!(
        m.describe("a").expect("installed").waiting,
        0,
        "timed-out waiter left the queue"
    );
    let waiter = {
        let m = m.clone();
        thread::spawn(move || {
            m.acquire(&holder("p", 2), &all(), "a", Some(Duration::from_secs(30)))
                .err()
        })
    };
    while m.describe("a").expect("installed").waiting < 1 {
        thread::yield_now();
    }
    m.revoke("a").expect("installed");
    assert_eq!(waiter.join().expect("waiter"), Some(Denial::Revoked));
    drop(held);
    assert!(m.describe("a").expect("installed").counters.balanced());
}

/// What a worker thread does next in the concurrency test.
#[derive(Clone, Copy, Debug)]
enum Step {
    Acquire { wait: bool },
    Release,
    Reclaim(usize),
    Drop,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => any::<bool>().prop_map(|wait| Step::Acquire { wait }),
        3 => Just(Step::Release),
        2 => (0..ReclaimReason::ALL.len()).prop_map(Step::Reclaim),
        1 => Just(Step::Drop),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    /// Many threads acquiring, releasing, reclaiming and dropping at random
    /// never hold more seats than issued, and every seat comes back.
    #[test]
    fn pool_never_oversells_or_loses_a_seat(
        seats in 1u32..5,
        plans in proptest::collection::vec(proptest::collection::vec(step(), 1..60), 2..6),
    ) {
        let ledger = Arc::new(MemoryLedger::default());
        let m = Arc::new(manager_with(ledger.clone(), Arc::new(SystemClock)));
        counted(&m, "a", seats);
        let held_now = Arc::new(AtomicU64::new(0));
        let max_seen = Arc::new(AtomicU64::new(0));
        let barrier = Arc::new(Barrier::new(plans.len()));
        let workers: Vec<_> = plans.into_iter().enumerate().map(|(t, plan)| {
            let (m, held_now, max_seen, barrier) =
                (m.clone(), held_now.clone(), max_seen.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                let h = holder(&format!("t{t}"), t as u64);
                let mut mine: Vec<Lease> = Vec::new();
                for s in plan {
                    match s {
                        Step::Acquire { wait } => {
                            let wait = wait.then_some(Duration::from_millis(2));
                            if let Ok(l) = m.acquire(&h, &all(), "a", wait) {
                                let now = held_now.fetch_add(1, Ordering::SeqCst) + 1;
                                max_seen.fetch_max(now, Ordering::SeqCst);
                                mine.push(l);
                            }
                        }
                        Step::Release | Step::Reclaim(_) | Step::Drop => {
                            if let Some(l) = mine.pop() {
                                held_now.fetch_sub(1, Ordering::SeqCst);
                                match s {
                                    Step::Release => { l.release(); }
                                    Step::Reclaim(i) => { l.reclaim(ReclaimReason::ALL[i]); }
                                    _ => drop(l),
                                }
                            }
                        }
                    }
                    let in_use = m.describe("a").map(|s| s.counters.in_use).unwrap_or(u32::MAX);
                    assert!(in_use <= seats, "in use {in_use} > {seats} seats");
                }
                held_now.fetch_sub(mine.len() as u64, Ordering::SeqCst);
                drop(mine);
            })
        }).collect();
        for w in workers {
            w.join().expect("worker did not panic");
        }
        let s = m.describe("a").expect("installed");
        prop_assert!(max_seen.load(Ordering::SeqCst) <= u64::from(seats));
        prop_assert_eq!(s.counters.in_use, 0);
        prop_assert!(s.counters.balanced());
        prop_assert!(s.counters.peak <= seats);
        // The counters agree with the ledger.
        let events = ledger.events();
        let checkouts = events.iter().filter(|e| e.kind == EventKind::Checkout).count() as u64;
        let ends = events.iter().filter(|e| matches!(e.kind, EventKind::Release | EventKind::Reclaim(_))).count() as u64;
        prop_assert_eq!(checkouts, s.counters.checkouts);
        prop_assert_eq!(ends, s.counters.releases + s.counters.reclaims.total());
    }
}
