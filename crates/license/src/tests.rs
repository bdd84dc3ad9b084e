//! Unit tests of the license core; no WebAssembly involved.

use super::*;
use crate::ledger::MemoryLedger;
use proptest::prelude::*;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

fn holder(plugin: &str, invocation: u64) -> Holder {
    Holder {
        plugin: plugin.into(),
        component_digest: "digest".into(),
        invocation,
    }
}

fn manager_with(ledger: Arc<MemoryLedger>, clock: Arc<dyn Clock>) -> Arc<LicenseManager> {
    Arc::new(LicenseManager::new(ledger, clock))
}

fn counted(m: &LicenseManager, id: &str, seats: u32) {
    m.install(id, Terms::new(Seats::Counted(seats)))
        .expect("valid id");
}

fn limits(wait: Option<Duration>) -> CallLimits {
    CallLimits {
        wait,
        max_leases: 64,
        max_acquires: 1_000_000,
    }
}

/// A call of `plugin` whose manifest names a, b and c.
fn call(m: &Arc<LicenseManager>, plugin: &str, invocation: u64) -> CallSeats {
    m.call(
        holder(plugin, invocation),
        Arc::new(Entitlement::to(["a", "b", "c"])),
        limits(None),
    )
}

fn waiting_call(
    m: &Arc<LicenseManager>,
    plugin: &str,
    invocation: u64,
    wait: Duration,
) -> CallSeats {
    m.call(
        holder(plugin, invocation),
        Arc::new(Entitlement::to(["a", "b", "c"])),
        limits(Some(wait)),
    )
}

/// Waits until at least `n` calls wait in line for license `id`, checking
/// every millisecond; fails the test if they do not within 30 s.
fn wait_for_waiters(m: &LicenseManager, id: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.describe(id).expect("installed").waiting < n {
        assert!(
            Instant::now() < deadline,
            "{n} call(s) never waited in line for {id}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

fn counters(m: &LicenseManager, id: &str) -> Counters {
    m.describe(id).expect("installed").counters
}

fn window(seats: u32, not_before: Option<u64>, expires_at: Option<u64>) -> Terms {
    Terms {
        not_before,
        expires_at,
        ..Terms::new(Seats::Counted(seats))
    }
}

#[test]
fn a_released_seat_lingers_with_its_call_until_the_call_ends() {
    let m = Arc::new(LicenseManager::default());
    counted(&m, "a", 1);
    let mut first = call(&m, "p", 1);
    let lease = first.acquire("a").expect("the only seat");
    assert!(first.release(lease), "the plugin sends the license back");
    assert!(!first.lease_is_valid(lease), "the lease ended");
    assert_eq!(counters(&m, "a").in_use, 1, "the seat stays with the call");
    let mut second = call(&m, "p", 2);
    assert_eq!(second.acquire("a"), Err(Denial::Exhausted));
    // Asking again in the same call takes the lingering seat back.
    let again = first.acquire("a").expect("the lingering seat");
    assert_ne!(again, lease, "a new lease");
    assert!(first.lease_is_valid(again));
    let ended = first.end(ReclaimReason::InvocationEnded);
    assert!(ended.held_to_end.contains("a"));
    assert_eq!(ended.leases, vec![lease, again]);
    let lease2 = second.acquire("a").expect("free once the first call ended");
    second.release(lease2);
    let ended2 = second.end(ReclaimReason::InvocationEnded);
    assert!(
        ended2.held_to_end.contains("a"),
        "released early, held to the end"
    );
    let c = counters(&m, "a");
    assert_eq!(c.checkouts, 3);
    assert_eq!(c.retakes, 1);
    assert_eq!(c.releases, 2);
    assert_eq!(c.reclaims.get(ReclaimReason::InvocationEnded), 1);
    assert_eq!(c.returns.get(ReclaimReason::InvocationEnded), 2);
    assert_eq!(c.denials.get(Denial::Exhausted), 1);
    assert_eq!(c.peak, 1);
    assert!(c.balanced(), "{c:?}");
}

#[test]
fn a_dropped_call_returns_its_seats_as_store_dropped() {
    let m = Arc::new(LicenseManager::default());
    counted(&m, "a", 1);
    let mut c1 = call(&m, "p", 1);
    c1.acquire("a").expect("seat");
    drop(c1);
    let c = counters(&m, "a");
    assert_eq!(c.reclaims.get(ReclaimReason::StoreDropped), 1);
    assert_eq!(c.returns.get(ReclaimReason::StoreDropped), 1);
    assert!(c.balanced());
    assert!(call(&m, "p", 2).acquire("a").is_ok(), "seat came back");
}

#[test]
fn unlimited_license_never_exhausts_but_counts() {
    let m = Arc::new(LicenseManager::default());
    m.install("a", Terms::new(Seats::Unlimited)).expect("valid");
    let mut calls: Vec<CallSeats> = (0..500).map(|i| call(&m, "p", i)).collect();
    for c in &mut calls {
        c.acquire("a").expect("seat");
    }
    assert_eq!(counters(&m, "a").in_use, 500);
    for mut c in calls {
        c.end(ReclaimReason::InvocationEnded);
    }
    let c = counters(&m, "a");
    assert_eq!((c.checkouts, c.peak, c.in_use), (500, 500, 0));
    assert!(c.balanced());
}

#[test]
fn ids_outside_the_manifest_are_unknown_whether_installed_or_not() {
    let m = Arc::new(LicenseManager::default());
    counted(&m, "a", 1);
    counted(&m, "secret", 1);
    let mut c = call(&m, "p", 1);
    assert_eq!(
        c.acquire("secret"),
        Err(Denial::UnknownLicense),
        "installed, not in manifest"
    );
    assert_eq!(
        c.acquire("zzz"),
        Err(Denial::UnknownLicense),
        "not installed"
    );
    assert_eq!(c.describe("secret"), Err(Denial::UnknownLicense));
    assert_eq!(c.describe("zzz"), Err(Denial::UnknownLicense));
    assert_eq!(c.license_ids(), vec!["a"]);
    c.end(ReclaimReason::InvocationEnded);
    assert_eq!(m.status().unknown_license_denials, 2);
    assert_eq!(
        counters(&m, "secret"),
        Counters::default(),
        "nothing about it moved"
    );
}

#[test]
fn refusals_are_one_ledger_row_per_call_license_and_reason() {
    let ledger = Arc::new(MemoryLedger::default());
    let m = manager_with(ledger.clone(), Arc::new(SystemClock));
    counted(&m, "a", 1);
    let mut holder_call = call(&m, "p", 1);
    holder_call.acquire("a").expect("seat");
    let mut flooder = call(&m, "q", 2);
    for _ in 0..10_000 {
        assert_eq!(flooder.acquire("a"), Err(Denial::Exhausted));
    }
    flooder.end(ReclaimReason::InvocationEnded);
    holder_call.end(ReclaimReason::InvocationEnded);
    let denials: Vec<UsageEvent> = ledger
        .events()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Denial(_)))
        .collect();
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0].count, 10_000);
    assert_eq!(denials[0].invocation_id, 2);
    assert_eq!(counters(&m, "a").denials.get(Denial::Exhausted), 10_000);
}

#[test]
fn the_request_cap_counts_refused_requests_too() {
    let ledger = Arc::new(MemoryLedger::default());
    let m = manager_with(ledger.clone(), Arc::new(SystemClock));
    counted(&m, "a", 1);
    let mut other = call(&m, "p", 1);
    other.acquire("a").expect("seat");
    let mut c = m.call(
        holder("q", 2),
        Arc::new(Entitlement::to(["a"])),
        CallLimits {
            wait: None,
            max_leases: 4,
            max_acquires: 3,
        },
    );
    for _ in 0..3 {
        assert_eq!(c.acquire("a"), Err(Denial::Exhausted));
    }
    other.end(ReclaimReason::InvocationEnded);
    assert_eq!(
        c.acquire("a"),
        Err(Denial::Exhausted),
        "over the cap, though a seat is free"
    );
    c.end(ReclaimReason::InvocationEnded);
    assert_eq!(counters(&m, "a").checkouts, 1);
    assert_eq!(counters(&m, "a").denials.get(Denial::Exhausted), 4);
}

#[test]
fn a_grant_that_expires_while_held_ends_its_seat_and_the_call_does_not_count() {
    let clock = Arc::new(ManualClock::at_secs(1_000));
    let m = manager_with(Arc::new(MemoryLedger::default()), clock.clone());
    m.install("a", window(2, Some(900), Some(1_100)))
        .expect("valid");
    m.install("b", window(1, Some(2_000), None)).expect("valid");
    let mut c = call(&m, "p", 1);
    assert_eq!(c.acquire("b"), Err(Denial::Expired), "not yet in force");
    let lease = c.acquire("a").expect("in window");
    assert!(c.lease_is_valid(lease));
    clock.set_secs(1_101);
    assert!(!c.lease_is_valid(lease), "expired while held");
    assert_eq!(
        m.sweep(),
        1,
        "the running host ends the seat without a restart"
    );
    assert_eq!(counters(&m, "a").in_use, 0);
    let ended = c.end(ReclaimReason::InvocationEnded);
    assert!(
        !ended.held_to_end.contains("a"),
        "its result must be withheld"
    );
    let cs = counters(&m, "a");
    assert_eq!(cs.reclaims.get(ReclaimReason::Expired), 1);
    assert_eq!(cs.returns.get(ReclaimReason::Expired), 1);
    assert!(cs.balanced(), "{cs:?}");
    assert_eq!(call(&m, "p", 2).acquire("a"), Err(Denial::Expired));
}

#[test]
fn seats_come_from_one_grant_the_one_that_ends_first() {
    let clock = Arc::new(ManualClock::at_secs(1_000));
    let m = manager_with(Arc::new(MemoryLedger::default()), clock.clone());
    m.set_grants(
        "a",
        vec![
            Grant::new("long", window(1, None, Some(5_000))),
            Grant::new("short", window(1, None, Some(2_000))),
        ],
    )
    .expect("valid");
    let mut c1 = call(&m, "p", 1);
    let mut c2 = call(&m, "p", 2);
    c1.acquire("a").expect("seat");
    c2.acquire("a").expect("seat");
    let grants = m.describe("a").expect("installed").grants;
    assert!(
        grants.iter().all(|g| g.counters.in_use == 1),
        "one seat of each"
    );
    c1.end(ReclaimReason::InvocationEnded);
    // The grant ending first gives the next seat.
    let mut c3 = call(&m, "p", 3);
    c3.acquire("a").expect("seat");
    let short = m.describe("a").expect("installed").grants;
    assert_eq!(
        short
            .iter()
            .find(|g| g.id == "short")
            .map(|g| g.counters.checkouts),
        Some(2)
    );
    // Past the short grant's end, only the long grant's seat is left, and
    // the seat held from the short grant ends.
    clock.set_secs(2_001);
    assert_eq!(m.sweep(), 1);
    assert_eq!(m.describe("a").expect("installed").seats, Seats::Counted(1));
    assert_eq!(call(&m, "p", 4).acquire("a"), Err(Denial::Exhausted));
    c2.end(ReclaimReason::InvocationEnded);
    assert!(call(&m, "p", 5).acquire("a").is_ok());
    c3.end(ReclaimReason::InvocationEnded);
}

#[test]
fn an_unrestricted_grant_does_not_lift_another_grants_plugin_binding() {
    let m = Arc::new(LicenseManager::default());
    m.set_grants(
        "a",
        vec![
            Grant::new(
                "bound",
                Terms {
                    plugins: vec!["vip".into()],
                    ..Terms::new(Seats::Counted(5))
                },
            ),
            Grant::new("open", Terms::new(Seats::Counted(1))),
        ],
    )
    .expect("valid");
    let mut s1 = call(&m, "stranger", 1);
    s1.acquire("a").expect("the open grant's seat");
    assert_eq!(
        call(&m, "stranger", 2).acquire("a"),
        Err(Denial::Exhausted),
        "the bound grant's five seats are not for strangers"
    );
    let mut vips: Vec<CallSeats> = (0..5).map(|i| call(&m, "vip", 10 + i)).collect();
    for v in &mut vips {
        v.acquire("a").expect("a bound seat");
    }
    let (info, _) = (s1.describe("a").expect("entitled"), ());
    assert_eq!(
        info.seats,
        Seats::Counted(1),
        "describe counts only grants for this plugin"
    );
    s1.end(ReclaimReason::InvocationEnded);
}

#[test]
fn a_renewal_installed_ahead_gives_seats_only_inside_its_window() {
    let clock = Arc::new(ManualClock::at_secs(1_000));
    let m = manager_with(Arc::new(MemoryLedger::default()), clock.clone());
    m.set_grants(
        "a",
        vec![
            Grant::new("2026", window(1, Some(0), Some(1_999))),
            Grant::new("2027", window(3, Some(3_000), Some(4_000))),
        ],
    )
    .expect("valid");
    assert_eq!(m.describe("a").expect("installed").seats, Seats::Counted(1));
    let mut c = call(&m, "p", 1);
    c.acquire("a").expect("this year's seat");
    assert_eq!(call(&m, "p", 2).acquire("a"), Err(Denial::Exhausted));
    c.end(ReclaimReason::InvocationEnded);
    clock.set_secs(2_500);
    assert_eq!(
        call(&m, "p", 3).acquire("a"),
        Err(Denial::Expired),
        "no seat in the gap"
    );
    clock.set_secs(3_000);
    let mut renewed: Vec<CallSeats> = (0..3).map(|i| call(&m, "p", 10 + i)).collect();
    for r in &mut renewed {
        r.acquire("a").expect("a renewed seat");
    }
    assert_eq!(call(&m, "p", 20).acquire("a"), Err(Denial::Exhausted));
}

#[test]
fn revoking_an_id_covers_later_grants_and_one_grant_can_be_revoked_alone() {
    let m = Arc::new(LicenseManager::default());
    m.set_grants(
        "a",
        vec![
            Grant::new("g1", Terms::new(Seats::Counted(1))),
            Grant::new("g2", Terms::new(Seats::Counted(1))),
        ],
    )
    .expect("valid");
    let mut c1 = call(&m, "p", 1);
    let l1 = c1.acquire("a").expect("seat");
    let mut c2 = call(&m, "p", 2);
    c2.acquire("a").expect("seat");
    let g1_holder = m.describe("a").expect("installed").grants[0]
        .counters
        .in_use;
    assert_eq!(g1_holder, 1);
    assert_eq!(m.revoke_grant("a", "g1"), Ok(1));
    assert!(!c1.lease_is_valid(l1), "g1's seat ended");
    assert!(
        !c1.end(ReclaimReason::InvocationEnded)
            .held_to_end
            .contains("a")
    );
    assert!(
        c2.end(ReclaimReason::InvocationEnded)
            .held_to_end
            .contains("a")
    );
    assert!(
        call(&m, "p", 3).acquire("a").is_ok(),
        "g2 still gives its seat"
    );
    assert_eq!(m.revoke("a"), Ok(0));
    assert_eq!(call(&m, "p", 4).acquire("a"), Err(Denial::Revoked));
    // A new grant does not lift the revocation; unrevoke does.
    m.set_grants(
        "a",
        vec![
            Grant::new("g2", Terms::new(Seats::Counted(1))),
            Grant::new("g3", Terms::new(Seats::Counted(1))),
        ],
    )
    .expect("valid");
    assert_eq!(call(&m, "p", 5).acquire("a"), Err(Denial::Revoked));
    m.unrevoke("a").expect("installed");
    assert!(call(&m, "p", 6).acquire("a").is_ok());
    assert_eq!(m.revoke("nope"), Err(LicenseError::Unknown("nope".into())));
    assert!(counters(&m, "a").balanced());
}

#[test]
fn revoke_ends_held_seats_once() {
    let m = Arc::new(LicenseManager::default());
    counted(&m, "a", 3);
    let mut c = call(&m, "p", 1);
    let l1 = c.acquire("a").expect("seat");
    let l2 = c.acquire("a").expect("seat");
    c.release(l2);
    assert_eq!(m.revoke("a"), Ok(2));
    assert!(!c.lease_is_valid(l1));
    assert!(!c.release(l1), "a revoked lease cannot be sent back");
    assert_eq!(
        c.acquire("a"),
        Err(Denial::Revoked),
        "nor its lingering seat taken back"
    );
    c.end(ReclaimReason::InvocationEnded);
    let s = counters(&m, "a");
    assert_eq!(s.reclaims.get(ReclaimReason::Revoked), 1, "the open lease");
    assert_eq!(s.returns.get(ReclaimReason::Revoked), 2, "both seats");
    assert_eq!(s.releases, 1);
    assert!(s.balanced(), "{s:?}");
}

#[test]
fn plugin_rules_refuse_other_plugins() {
    let m = Arc::new(LicenseManager::default());
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
    let by_digest = Holder {
        plugin: "renamed".into(),
        component_digest: digest.into(),
        invocation: 2,
    };
    let entitled = Arc::new(Entitlement::to(["a"]));
    assert!(call(&m, "hello", 1).acquire("a").is_ok());
    assert!(
        m.call(by_digest, entitled, limits(None))
            .acquire("a")
            .is_ok()
    );
    let mut stranger = call(&m, "stranger", 3);
    assert_eq!(stranger.acquire("a"), Err(Denial::NotEntitled));
    assert_eq!(stranger.describe("a"), Err(Denial::NotEntitled));
    stranger.end(ReclaimReason::InvocationEnded);
    let s = m.describe("a").expect("installed");
    assert_eq!(s.per_plugin["stranger"].denials.get(Denial::NotEntitled), 1);
}

#[test]
fn operator_rules_include_exclude_reserve_and_cap() {
    let m = Arc::new(LicenseManager::default());
    counted(&m, "a", 4);
    let rules = Rules {
        include: vec!["vip".into(), "std".into(), "rogue".into()],
        exclude: vec!["rogue".into()],
        reserve: [("vip".to_string(), 2)].into_iter().collect(),
        max_per_plugin: Some(3),
        exact: false,
    };
    m.set_rules("a", rules).expect("installed");
    assert_eq!(
        call(&m, "rogue", 1).acquire("a"),
        Err(Denial::NotEntitled),
        "excluded"
    );
    assert_eq!(
        call(&m, "other", 2).acquire("a"),
        Err(Denial::NotEntitled),
        "not included"
    );
    // Two of four seats are held back for vip: std gets two, then none.
    let mut std_ = call(&m, "std", 3);
    std_.acquire("a").expect("std 1");
    std_.acquire("a").expect("std 2");
    assert_eq!(
        std_.acquire("a"),
        Err(Denial::Exhausted),
        "reserved for vip"
    );
    let mut vip = call(&m, "vip", 4);
    vip.acquire("a").expect("vip 1");
    vip.acquire("a").expect("vip 2");
    assert_eq!(vip.acquire("a"), Err(Denial::Exhausted), "all four in use");
    std_.end(ReclaimReason::InvocationEnded);
    vip.acquire("a").expect("vip 3");
    assert_eq!(vip.acquire("a"), Err(Denial::Exhausted), "max 3 per plugin");
    let mut std2 = call(&m, "std", 5);
    std2.acquire("a").expect("the last free seat");
    vip.end(ReclaimReason::InvocationEnded);
    std2.end(ReclaimReason::InvocationEnded);
    assert!(counters(&m, "a").balanced());
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
    let mut held_by_p = call(&m, "p", 1);
    held_by_p.acquire("a").expect("p holds its one");
    let mut held_by_q = call(&m, "q", 2);
    held_by_q.acquire("a").expect("q holds the other");
    // p waits first but may hold only one; q's waiter is served when q's seat frees.
    let (mp, mq) = (m.clone(), m.clone());
    let p_waiter = thread::spawn(move || {
        waiting_call(&mp, "p", 3, Duration::from_millis(300))
            .acquire("a")
            .err()
    });
    wait_for_waiters(&m, "a", 1);
    let q_waiter = thread::spawn(move || {
        waiting_call(&mq, "q", 4, Duration::from_secs(30))
            .acquire("a")
            .is_ok()
    });
    wait_for_waiters(&m, "a", 2);
    held_by_q.end(ReclaimReason::InvocationEnded);
    assert!(
        q_waiter.join().expect("q"),
        "q served although p waited first"
    );
    assert_eq!(p_waiter.join().expect("p"), Some(Denial::TimedOut));
    held_by_p.end(ReclaimReason::InvocationEnded);
    assert!(counters(&m, "a").balanced());
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
fn the_ledger_holds_both_moments_of_a_release() {
    let ledger = Arc::new(MemoryLedger::default());
    let m = manager_with(ledger.clone(), Arc::new(SystemClock));
    counted(&m, "a", 1);
    let mut c = call(&m, "p", 7);
    let lease = c.acquire("a").expect("seat");
    c.release(lease);
    let again = c.acquire("a").expect("lingering seat");
    let _ = call(&m, "q", 8).acquire("a");
    c.end(ReclaimReason::InvocationEnded);
    m.record_withheld(&holder("p", 7), "a");
    let events = ledger.events();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    let ended = ReclaimReason::InvocationEnded;
    assert_eq!(
        kinds,
        vec![
            EventKind::Checkout,
            EventKind::Release,
            EventKind::Retake,
            EventKind::Denial(Denial::Exhausted),
            EventKind::Reclaim(ended),
            EventKind::Return(ended),
            EventKind::Withheld
        ]
    );
    assert_eq!(events[0].lease_id, Some(lease));
    assert_eq!(
        events[0].seat_id,
        Some(lease),
        "a seat's id is its first lease's"
    );
    assert_eq!(events[2].lease_id, Some(again));
    assert_eq!(events[2].seat_id, Some(lease));
    assert_eq!(events[5].seat_id, Some(lease));
    assert!(
        events[..3]
            .iter()
            .all(|e| e.grant_id.as_deref() == Some("a"))
    );
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1)
    );
    assert_eq!(counters(&m, "a").withheld, 1);
}

#[test]
fn waiters_are_served_in_fifo_order() {
    let m = Arc::new(LicenseManager::default());
    counted(&m, "a", 1);
    let mut first = call(&m, "p", 0);
    first.acquire("a").expect("seat");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 1..=4u64 {
        // Queue them one after another so their FIFO order is known.
        wait_for_waiters(&m, "a", (i - 1) as usize);
        let (m, order) = (m.clone(), order.clone());
        handles.push(thread::spawn(move || {
            let mut c = waiting_call(&m, "p", i, Duration::from_secs(30));
            c.acquire("a").expect("served before the wait ends");
            order.lock().expect("lock").push(i);
            c.end(ReclaimReason::InvocationEnded);
        }));
    }
    wait_for_waiters(&m, "a", 4);
    // A newcomer without a wait may not jump the queue.
    assert_eq!(call(&m, "q", 9).acquire("a"), Err(Denial::Exhausted));
    first.end(ReclaimReason::InvocationEnded);
    for h in handles {
        h.join().expect("waiter");
    }
    assert_eq!(*order.lock().expect("lock"), vec![1, 2, 3, 4]);
    assert!(counters(&m, "a").balanced());
}

#[test]
fn wait_times_out_and_revoke_wakes_waiters() {
    let m = Arc::new(LicenseManager::default());
    counted(&m, "a", 1);
    let mut held = call(&m, "p", 0);
    held.acquire("a").expect("seat");
    let err = waiting_call(&m, "p", 1, Duration::from_millis(30)).acquire("a");
    assert_eq!(err, Err(Denial::TimedOut));
    assert_eq!(
        m.describe("a").expect("installed").waiting,
        0,
        "timed-out waiter left the queue"
    );
    let waiter = {
        let m = m.clone();
        thread::spawn(move || {
            waiting_call(&m, "p", 2, Duration::from_secs(30))
                .acquire("a")
                .err()
        })
    };
    wait_for_waiters(&m, "a", 1);
    m.revoke("a").expect("installed");
    assert_eq!(waiter.join().expect("waiter"), Some(Denial::Revoked));
    drop(held);
    assert!(counters(&m, "a").balanced());
}

/// What a worker thread does next in the concurrency test.
#[derive(Clone, Copy, Debug)]
enum Step {
    Acquire { wait: bool },
    Release,
    EndCall(usize),
    DropCall,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => any::<bool>().prop_map(|wait| Step::Acquire { wait }),
        3 => Just(Step::Release),
        2 => (0..ReclaimReason::ALL.len()).prop_map(Step::EndCall),
        1 => Just(Step::DropCall),
    ]
}

/// Seats in use per grant, replayed from the ledger alone, row by row; the
/// highest value seen per grant.
fn replay_peaks(events: &[UsageEvent]) -> BTreeMap<String, i64> {
    let mut now: BTreeMap<String, i64> = BTreeMap::new();
    let mut peak: BTreeMap<String, i64> = BTreeMap::new();
    for e in events {
        let grant = e.grant_id.as_deref().unwrap_or("?").to_string();
        let delta = match e.kind {
            EventKind::Checkout => 1,
            EventKind::Return(_) => -1,
            _ => 0,
        };
        let n = now.entry(grant.clone()).or_default();
        *n += delta;
        let p = peak.entry(grant).or_default();
        *p = (*p).max(*n);
    }
    peak
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    /// Many threads running calls that acquire, release, ask again, end and
    /// drop at random, on two grants, never hold more seats than issued;
    /// every seat comes back; and the ledger alone, replayed row by row,
    /// never shows a grant with more seats in use than it has.
    #[test]
    fn concurrent_histories_replay_within_the_seats(
        seats in (1u32..4, 1u32..3),
        plans in proptest::collection::vec(proptest::collection::vec(step(), 1..50), 2..6),
    ) {
        let ledger = Arc::new(MemoryLedger::default());
        let m = manager_with(ledger.clone(), Arc::new(SystemClock));
        m.set_grants("a", vec![
            Grant::new("g1", Terms::new(Seats::Counted(seats.0))),
            Grant::new("g2", Terms::new(Seats::Counted(seats.1))),
        ]).expect("valid");
        let total = seats.0 + seats.1;
        let barrier = Arc::new(Barrier::new(plans.len()));
        let workers: Vec<_> = plans.into_iter().enumerate().map(|(t, plan)| {
            let (m, barrier) = (m.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                let mut invocation = (t as u64) << 32;
                let mut current: Option<CallSeats> = None;
                let mut open: Vec<u64> = Vec::new();
                for s in plan {
                    match s {
                        Step::Acquire { wait } => {
                            let c = current.get_or_insert_with(|| {
                                invocation += 1;
                                let wait = wait.then_some(Duration::from_millis(2));
                                m.call(holder(&format!("t{t}"), invocation),
                                    Arc::new(Entitlement::to(["a"])), limits(wait))
                            });
                            if let Ok(lease) = c.acquire("a") {
                                open.push(lease);
                            }
                        }
                        Step::Release => {
                            if let (Some(c), Some(lease)) = (current.as_mut(), open.pop()) {
                                c.release(lease);
                            }
                        }
                        Step::EndCall(i) => {
                            if let Some(mut c) = current.take() {
                                c.end(ReclaimReason::ALL[i]);
                            }
                            open.clear();
                        }
                        Step::DropCall => {
                            current = None;
                            open.clear();
                        }
                    }
                    let in_use = m.describe("a").map(|s| s.counters.in_use).unwrap_or(u32::MAX);
                    assert!(in_use <= total, "in use {in_use} > {total} seats");
                }
            })
        }).collect();
        for w in workers {
            w.join().expect("worker did not panic");
        }
        let s = m.describe("a").expect("installed");
        prop_assert_eq!(s.counters.in_use, 0);
        prop_assert!(s.counters.balanced(), "{:?}", s.counters);
        for g in &s.grants {
            let limit = g.terms.seats.limit().unwrap_or(u32::MAX);
            prop_assert!(g.counters.peak <= limit);
        }
        // The ledger alone: seats in use per grant never above its seats,
        // and the counters agree with it.
        let events = ledger.events();
        let peaks = replay_peaks(&events);
        prop_assert!(peaks.get("g1").copied().unwrap_or(0) <= i64::from(seats.0), "{peaks:?}");
        prop_assert!(peaks.get("g2").copied().unwrap_or(0) <= i64::from(seats.1), "{peaks:?}");
        let count = |f: &dyn Fn(&EventKind) -> bool| {
            events.iter().filter(|e| f(&e.kind)).map(|e| e.count).sum::<u64>()
        };
        prop_assert_eq!(count(&|k| matches!(k, EventKind::Checkout | EventKind::Retake)), s.counters.checkouts);
        prop_assert_eq!(count(&|k| matches!(k, EventKind::Release | EventKind::Reclaim(_))),
            s.counters.releases + s.counters.reclaims.total());
        prop_assert_eq!(count(&|k| matches!(k, EventKind::Return(_))), s.counters.returns.total());
    }
}

#[test]
fn a_lingering_seat_whose_grant_ended_gives_way_to_a_seat_of_another_grant() {
    let clock = Arc::new(ManualClock::at_secs(1_000));
    let m = manager_with(Arc::new(MemoryLedger::default()), clock.clone());
    m.set_grants(
        "a",
        vec![
            Grant::new("short", window(1, None, Some(1_500))),
            Grant::new("long", window(1, None, Some(9_000))),
        ],
    )
    .expect("valid");
    let mut c = call(&m, "p", 1);
    let first = c.acquire("a").expect("the short grant's seat");
    c.release(first);
    clock.set_secs(1_600);
    let again = c.acquire("a").expect("a seat of the grant still in force");
    assert!(c.lease_is_valid(again));
    let ended = c.end(ReclaimReason::InvocationEnded);
    assert!(
        ended.held_to_end.contains("a"),
        "it held a seat in force to the end"
    );
    let s = m.describe("a").expect("installed");
    assert_eq!(s.counters.returns.get(ReclaimReason::Expired), 1);
    assert!(s.counters.balanced(), "{:?}", s.counters);
}

/// A shared manager with license `a` as one 5-seat grant `g`.
fn shared_five() -> (Arc<LicenseManager>, Arc<MemoryLedger>) {
    let ledger = Arc::new(MemoryLedger::default());
    let m = Arc::new(LicenseManager::shared(
        ledger.clone(),
        Arc::new(SystemClock),
    ));
    m.set_grants("a", vec![Grant::new("g", Terms::new(Seats::Counted(5)))])
        .expect("valid");
    (m, ledger)
}

fn share(seats: u32, token: i64, for_: Duration) -> Share {
    Share {
        seats,
        token,
        until: Instant::now() + for_,
    }
}

#[test]
fn a_shared_grant_gives_only_the_seats_of_this_hosts_batch() {
    let (m, ledger) = shared_five();
    assert!(m.is_shared());
    assert_eq!(
        call(&m, "p", 1).acquire("a"),
        Err(Denial::Exhausted),
        "no batch yet: no seat, whatever the grant's seats"
    );
    assert_eq!(
        m.set_share("a", "g", share(2, 7, Duration::from_secs(60))),
        Ok(0)
    );
    let (mut c1, mut c2, mut c3) = (call(&m, "p", 2), call(&m, "p", 3), call(&m, "p", 4));
    c1.acquire("a").expect("first of the batch");
    c2.acquire("a").expect("second of the batch");
    assert_eq!(c3.acquire("a"), Err(Denial::Exhausted), "the batch is 2");
    let demand = m.demand();
    assert_eq!(demand.len(), 1);
    assert_eq!(
        (
            demand[0].grant_id.as_str(),
            demand[0].seats,
            demand[0].in_use
        ),
        ("g", 5, 2)
    );
    // Growing the batch lets the third call in.
    m.set_share("a", "g", share(3, 8, Duration::from_secs(60)))
        .expect("grant");
    c3.acquire("a").expect("the batch grew");
    for mut c in [c1, c2, c3] {
        assert!(
            c.end(ReclaimReason::InvocationEnded)
                .held_to_end
                .contains("a")
        );
    }
    // Every row of a seat carries the token of the batch it came from.
    let tokens: Vec<(EventKind, Option<i64>)> = ledger
        .events()
        .iter()
        .filter(|e| e.seat_id.is_some())
        .map(|e| (e.kind, e.token))
        .collect();
    let checkouts: Vec<Option<i64>> = tokens
        .iter()
        .filter(|(k, _)| *k == EventKind::Checkout)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(checkouts, [Some(7), Some(7), Some(8)]);
    assert!(tokens.iter().all(|(_, t)| t.is_some()), "{tokens:?}");
}

#[test]
fn seats_of_a_lapsed_batch_end_and_their_calls_are_withheld() {
    let (m, ledger) = shared_five();
    m.set_share("a", "g", share(2, 1, Duration::from_secs(60)))
        .expect("grant");
    let mut held = call(&m, "p", 1);
    let lease = held.acquire("a").expect("seat");
    // The batch is not renewed in time: its deadline passes.
    let ended = m
        .set_share(
            "a",
            "g",
            Share {
                seats: 2,
                token: 1,
                until: Instant::now(),
            },
        )
        .expect("grant");
    assert_eq!(ended, 1, "the held seat ends");
    assert!(!held.lease_is_valid(lease));
    assert_eq!(call(&m, "p", 2).acquire("a"), Err(Denial::Exhausted));
    let outcome = held.end(ReclaimReason::InvocationEnded);
    assert!(!outcome.held_to_end.contains("a"), "withheld");
    // Withheld because the batch lapsed, not because the license did.
    assert!(outcome.lapsed.contains("a"), "{outcome:?}");
    assert_eq!(outcome.denied.get("a"), None);
    let cs = counters(&m, "a");
    assert_eq!(cs.reclaims.get(ReclaimReason::LeaseLapsed), 1);
    assert_eq!(cs.returns.get(ReclaimReason::LeaseLapsed), 1);
    assert!(cs.balanced(), "{cs:?}");
    assert!(
        ledger
            .events()
            .iter()
            .any(|e| e.kind == EventKind::Return(ReclaimReason::LeaseLapsed) && e.token == Some(1))
    );
}

#[test]
fn a_call_that_may_not_wait_asks_the_store_once_before_it_is_refused() {
    let (m, _) = shared_five();
    m.set_share("a", "g", share(1, 1, Duration::from_secs(60)))
        .expect("grant");
    let mut first = call(&m, "p", 1);
    first.acquire("a").expect("the batch's one seat");
    let waiting = |m: &LicenseManager| m.demand().first().map_or(0, |d| d.waiting);
    std::thread::scope(|scope| {
        // The batch grows while the call waits: it gets a seat.
        let asker = scope.spawn(|| {
            let mut second = call(&m, "p", 2);
            second.acquire("a").map(|_| second)
        });
        while waiting(&m) == 0 {
            std::thread::yield_now();
        }
        m.set_share("a", "g", share(2, 2, Duration::from_secs(60)))
            .expect("grant");
        let _second = asker
            .join()
            .expect("asker")
            .expect("the grown batch's seat");
        // The store answers with no more: refused at once, not after the
        // longest wait.
        let asked = Instant::now();
        let mut third = call(&m, "p", 3);
        let asker = scope.spawn(move || third.acquire("a"));
        while waiting(&m) == 0 {
            std::thread::yield_now();
        }
        m.set_share("a", "g", share(2, 3, Duration::from_secs(60)))
            .expect("grant");
        assert_eq!(asker.join().expect("asker"), Err(Denial::Exhausted));
        assert!(asked.elapsed() < STORE_ANSWER_WAIT, "{:?}", asked.elapsed());
    });
}

#[test]
fn a_capped_batch_keeps_its_held_seats_and_drains_to_the_cap() {
    let (m, _) = shared_five();
    m.set_share("a", "g", share(4, 1, Duration::from_secs(60)))
        .expect("grant");
    let mut calls: Vec<CallSeats> = (1..=4).map(|i| call(&m, "p", i)).collect();
    for c in &mut calls {
        c.acquire("a").expect("seat");
    }
    // Other hosts wait: this host's part is 2. No held seat ends.
    m.cap_share("a", "g", Some(2)).expect("grant");
    assert_eq!(counters(&m, "a").in_use, 4);
    // Seats freed above the cap are not taken again here.
    for mut c in calls.drain(..2) {
        c.end(ReclaimReason::InvocationEnded);
    }
    assert_eq!(call(&m, "p", 5).acquire("a"), Err(Denial::Exhausted));
    for mut c in calls.drain(..1) {
        c.end(ReclaimReason::InvocationEnded);
    }
    let mut under = call(&m, "p", 6);
    under.acquire("a").expect("below the cap");
    assert_eq!(call(&m, "p", 7).acquire("a"), Err(Denial::Exhausted));
    // Lifting the cap gives the whole batch again.
    m.cap_share("a", "g", None).expect("grant");
    call(&m, "p", 8).acquire("a").expect("the cap lifted");
}

#[test]
fn a_batch_renewed_smaller_than_in_use_ends_the_newest_seats() {
    let (m, _) = shared_five();
    m.set_share("a", "g", share(3, 1, Duration::from_secs(60)))
        .expect("grant");
    let mut calls: Vec<CallSeats> = (1..=3).map(|i| call(&m, "p", i)).collect();
    let leases: Vec<u64> = calls
        .iter_mut()
        .map(|c| c.acquire("a").expect("seat"))
        .collect();
    // The store could give back only 1 (the batch had lapsed there and
    // other hosts took the rest).
    assert_eq!(
        m.set_share("a", "g", share(1, 2, Duration::from_secs(60))),
        Ok(2)
    );
    let valid: Vec<bool> = calls
        .iter()
        .zip(&leases)
        .map(|(c, l)| c.lease_is_valid(*l))
        .collect();
    assert_eq!(valid, [true, false, false], "the oldest seat stays");
    assert_eq!(counters(&m, "a").in_use, 1);
}

#[test]
fn unlimited_grants_need_no_batch_and_unknown_grants_are_named() {
    let ledger = Arc::new(MemoryLedger::default());
    let m = Arc::new(LicenseManager::shared(ledger, Arc::new(SystemClock)));
    m.install("a", Terms::new(Seats::Unlimited)).expect("valid");
    call(&m, "p", 1).acquire("a").expect("unlimited");
    assert!(
        m.demand().is_empty(),
        "nothing to lease for an unlimited grant"
    );
    assert!(matches!(
        m.set_share("a", "nope", share(1, 1, Duration::from_secs(1))),
        Err(LicenseError::UnknownGrant { .. })
    ));
}

#[test]
fn the_status_names_who_holds_each_seat_and_since_when() {
    let clock = Arc::new(ManualClock::at_secs(1_000));
    let m = manager_with(Arc::new(MemoryLedger::default()), clock.clone());
    counted(&m, "a", 2);
    let mut first = call(&m, "p", 7);
    let lease = first.acquire("a").expect("seat");
    clock.set_secs(1_005);
    let mut second = call(&m, "q", 8);
    second.acquire("a").expect("seat");
    first.release(lease);
    let holders = m.describe("a").expect("a").holders;
    let seen: Vec<(&str, u64, Option<u64>, u64)> = holders
        .iter()
        .map(|h| (h.plugin.as_str(), h.invocation, h.lease, h.since_ms))
        .collect();
    assert_eq!(
        seen,
        [
            ("p", 7, None, 1_000_000),
            ("q", 8, Some(holders[1].seat), 1_005_000)
        ]
    );
    assert_eq!(holders[0].seat, lease);
    first.end(ReclaimReason::InvocationEnded);
    second.end(ReclaimReason::InvocationEnded);
    assert!(m.describe("a").expect("a").holders.is_empty());
}
