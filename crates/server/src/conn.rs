//! What one client may hold of the server: connections per client address,
//! a write timeout for responses the client does not read, a byte budget
//! for buffered request bodies, and the host names requests may name.

use crate::config::{AddressRange, AllowedHost};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Open connections per client address, capped at `limit`; addresses in
/// `trusted` (proxies that carry many clients) are not counted.
pub(crate) struct ClientSlots {
    limit: u32,
    trusted: Vec<AddressRange>,
    open: Mutex<HashMap<IpAddr, u32>>,
    /// Connections refused because their client was at the limit.
    pub(crate) refused: AtomicU64,
}

/// One counted connection; gives its place back when dropped.
pub(crate) struct ClientSlot {
    slots: Arc<ClientSlots>,
    client: IpAddr,
}

/// The address connections are counted under: an IPv4 address, or the /64
/// an IPv6 address is in (one host usually holds a whole /64).
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
        v4 => v4,
    }
}

impl ClientSlots {
    /// Slots for at most `limit` connections per client address.
    pub(crate) fn new(limit: u32, trusted: Vec<AddressRange>) -> Self {
        Self {
            limit,
            trusted,
            open: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        }
    }

    /// A place for a connection from `ip`: `Ok(None)` for a trusted proxy
    /// (not counted), `Err(())` when that client already holds `limit`.
    pub(crate) fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Option<ClientSlot>, ()> {
        if self.trusted.iter().any(|range| range.contains(ip)) {
            return Ok(None);
        }
        let client = client_of(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if *count >= self.limit {
            drop(open);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(());
        }
        *count += 1;
        Ok(Some(ClientSlot {
            slots: self.clone(),
            client,
        }))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// The answer to a connection over its client's limit, written before it
/// is closed (the request is not read).
pub(crate) fn too_many_connections(limit: u32) -> Vec<u8> {
    let body = serde_json::json!({
        "error": "too-many-connections",
        "message": format!(
            "this client address already has {limit} connections open, the most `max_connections_per_client` allows; reuse or close one of them"
        ),
    })
    .to_string();
    format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A connection whose writes fail with `TimedOut` once the client has taken
/// none of the pending bytes for `timeout`, so a client that stops reading
/// its response does not keep the connection (and the response's bytes).
pub(crate) struct TimedWrites<S> {
    inner: S,
    timeout: Duration,
    /// Armed while a write waits for the client to make room.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> TimedWrites<S> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// After a write attempt: progress disarms the timer; waiting arms it
    /// (once) and fails the write when it runs out.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took none of its response for {}",
                    humantime::format_duration(timeout)
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

/// Bytes of request bodies the server may hold at once, over all requests.
pub(crate) struct BodyBudget {
    limit: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
    /// Requests refused because the budget was spent.
    pub(crate) refused: AtomicU64,
}

/// Bytes taken from a [`BodyBudget`]; given back when dropped.
pub(crate) struct Reservation<'a> {
    budget: &'a BodyBudget,
    bytes: usize,
}

impl BodyBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The budget in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes held at once since the server started.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// An empty reservation, to grow as a body arrives.
    pub(crate) fn start(&self) -> Reservation<'_> {
        Reservation {
            budget: self,
            bytes: 0,
        }
    }

    fn take(&self, bytes: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            });
        match taken {
            Ok(before) => {
                self.peak.fetch_max(before + bytes, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

impl Reservation<'_> {
    /// Grows the reservation to at least `bytes`; false (and unchanged)
    /// when the budget cannot cover it.
    pub(crate) fn cover(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        if self.budget.take(bytes - self.bytes) {
            self.bytes = bytes;
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Why a request's host is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostRefusal {
    /// The request names no host.
    Missing,
    /// The request names a host not in `allowed_hosts`.
    NotAllowed,
}

/// Checks the host a request names (the `Host` header, and the authority
/// of an absolute-form target when there is one) against `allowed`.
pub(crate) fn check_host(
    allowed: &[AllowedHost],
    header: Option<&[u8]>,
    authority: Option<&str>,
) -> Result<(), HostRefusal> {
    let names: Vec<&[u8]> = header
        .into_iter()
        .chain(authority.map(str::as_bytes))
        .collect();
    if names.is_empty() {
        return Err(HostRefusal::Missing);
    }
    for name in names {
        let parsed = std::str::from_utf8(name)
            .ok()
            .and_then(crate::config::split_host);
        let Some((host, port)) = parsed else {
            return Err(HostRefusal::NotAllowed);
        };
        if !allowed.iter().any(|a| a.matches(&host, port)) {
            return Err(HostRefusal::NotAllowed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_capped_per_address_and_proxies_are_not() {
        let trusted = vec![AddressRange::parse("10.0.0.1").expect("proxy")];
        let slots = Arc::new(ClientSlots::new(2, trusted));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let first = slots.enter(a).expect("first").expect("counted");
        let _second = slots.enter(a).expect("second");
        assert!(slots.enter(a).is_err(), "third from one address");
        assert!(
            slots
                .enter("::ffff:192.0.2.1".parse().expect("mapped"))
                .is_err(),
            "the same address, IPv4-mapped"
        );
        assert!(slots.enter("192.0.2.2".parse().expect("ip")).is_ok());
        drop(first);
        assert!(slots.enter(a).is_ok(), "a place came free");
        // One IPv6 /64 is one client.
        let _x = slots.enter("2001:db8::1".parse().expect("v6")).expect("1");
        let _y = slots.enter("2001:db8::2".parse().expect("v6")).expect("2");
        assert!(slots.enter("2001:db8::3".parse().expect("v6")).is_err());
        assert!(slots.enter("2001:db8:0:1::1".parse().expect("v6")).is_ok());
        // A proxy is never counted.
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..10 {
            assert!(matches!(slots.enter(proxy), Ok(None)));
        }
        assert_eq!(slots.refused.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_body_budget_never_goes_over_and_comes_back() {
        let budget = BodyBudget::new(100);
        let mut a = budget.start();
        assert!(a.cover(60));
        let mut b = budget.start();
        assert!(!b.cover(41), "60 + 41 > 100");
        assert!(b.cover(40));
        assert_eq!(budget.used(), 100);
        assert!(!a.cover(61));
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.cover(100));
        drop(b);
        assert_eq!((budget.used(), budget.peak()), (0, 100));
        assert_eq!(budget.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn hosts_are_checked_in_the_header_and_the_target() {
        let allowed: Vec<AllowedHost> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(|h| AllowedHost::parse(h).expect("host"))
            .collect();
        let ok = |h: &str| check_host(&allowed, Some(h.as_bytes()), None);
        assert_eq!(ok("localhost:7878"), Ok(()));
        assert_eq!(ok("127.0.0.1"), Ok(()));
        assert_eq!(ok("[::1]:9000"), Ok(()));
        assert_eq!(ok("LOCALHOST."), Ok(()));
        assert_eq!(ok("evil.example:7878"), Err(HostRefusal::NotAllowed));
        assert_eq!(ok("127.0.0.1.evil.example"), Err(HostRefusal::NotAllowed));
        assert_eq!(ok(""), Err(HostRefusal::NotAllowed));
        assert_eq!(
            check_host(&allowed, Some(b"localhost\xff"), None),
            Err(HostRefusal::NotAllowed)
        );
        assert_eq!(check_host(&allowed, None, None), Err(HostRefusal::Missing));
        assert_eq!(
            check_host(&allowed, Some(b"localhost"), Some("evil.example")),
            Err(HostRefusal::NotAllowed)
        );
        assert_eq!(check_host(&allowed, None, Some("localhost:1")), Ok(()));
    }
}
