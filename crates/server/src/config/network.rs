//! Values of the connection keys: `trusted_proxies` (addresses and CIDR
//! ranges) and `allowed_hosts` (host names a request may name).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address or a CIDR range of addresses (`trusted_proxies`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    /// The first address of the range.
    pub addr: IpAddr,
    /// Leading bits that must match: 32 (IPv4) or 128 (IPv6) for one address.
    pub prefix: u8,
}

impl AddressRange {
    /// Parses `"10.0.0.7"`, `"10.0.0.0/8"`, `"::1"` or `"fd00::/8"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let example =
            "write an address like \"10.0.0.7\" or \"::1\", or a range like \"10.0.0.0/8\"";
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or range; {example}"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= bits => p,
                _ => {
                    return Err(format!(
                        "{text:?}: the range's prefix must be a number from 0 to {bits}; {example}"
                    ));
                }
            },
        };
        if mask(addr, prefix) != addr {
            return Err(format!(
                "{text:?} has bits set past its /{prefix} prefix; write the range's first address, {}/{prefix}",
                mask(addr, prefix)
            ));
        }
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` lies in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

/// `ip` with every bit past the first `prefix` cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

/// One entry of `allowed_hosts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedHost {
    /// `"*"`: any host name at all (the check is off).
    Any,
    /// A host name or IP literal, lowercase (IPv6 in brackets), with the one
    /// port it must name, or `None` for any port or none.
    Name {
        /// The host, such as `localhost`, `127.0.0.1` or `[::1]`.
        host: String,
        /// The port, if the entry names one.
        port: Option<u16>,
    },
}

impl AllowedHost {
    /// Parses an `allowed_hosts` entry: `"*"`, or `host` or `host:port`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Any);
        }
        let example = "write a host name such as \"api.example.com\" or \"127.0.0.1:7878\" (no scheme, no path), or \"*\" for any";
        let (host, port) = split_host(text).ok_or_else(|| {
            format!("{text:?} is not a host name with an optional port; {example}")
        })?;
        if !valid_host(&host) {
            return Err(format!(
                "{text:?} is not a host name with an optional port; {example}"
            ));
        }
        Ok(Self::Name { host, port })
    }

    /// Whether a request naming `host` (lowercase) and `port` is let in.
    pub fn matches(&self, host: &str, port: Option<u16>) -> bool {
        match self {
            Self::Any => true,
            Self::Name { host: h, port: p } => h == host && (p.is_none() || *p == port),
        }
    }
}

/// The names a loopback listener answers to by default, on any port (a
/// tunnel such as `ssh -L 9000:localhost:7878` changes the port a client
/// names).
pub fn loopback_hosts() -> Vec<AllowedHost> {
    ["localhost", "127.0.0.1", "[::1]"]
        .into_iter()
        .map(|host| AllowedHost::Name {
            host: host.to_string(),
            port: None,
        })
        .collect()
}

/// Splits `host[:port]` (the form of a `Host` header) into a lowercase host,
/// without one trailing dot, and its port; `None` when it is not that form.
pub fn split_host(text: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if text.starts_with('[') {
        let end = text.find(']')?;
        let rest = &text[end + 1..];
        let port = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':')?),
        };
        (&text[..=end], port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.is_empty() || (!host.starts_with('[') && host.contains(':')) {
        return None;
    }
    Some((host, port))
}

/// A DNS name (letters, digits, '-', '.'), an IPv4 address, or an IPv6
/// address in brackets.
fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_contain_their_addresses() {
        let one = AddressRange::parse("127.0.0.1").expect("one");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        assert!(one.contains("::ffff:127.0.0.1".parse().expect("mapped")));
        let net = AddressRange::parse("10.0.0.0/8").expect("net");
        assert!(net.contains("10.200.3.4".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        let v6 = AddressRange::parse("fd00::/8").expect("v6");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("10.0.0.1".parse().expect("ip")));
        assert!(
            AddressRange::parse("0.0.0.0/0")
                .expect("all")
                .contains("8.8.8.8".parse().expect("ip"))
        );
        assert!(AddressRange::parse("[::1]").is_ok());
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/33",
            "10.0.0.1/8",
            "::1/129",
            "host",
            "10.0.0.0/x",
        ] {
            assert!(AddressRange::parse(bad).is_err(), "{bad}");
        }
        assert!(
            AddressRange::parse("10.0.0.1/8")
                .expect_err("host bits")
                .contains("10.0.0.0/8")
        );
    }

    #[test]
    fn host_entries_parse_and_match() {
        assert_eq!(AllowedHost::parse("*"), Ok(AllowedHost::Any));
        let any_port = AllowedHost::parse("API.example.com").expect("name");
        assert!(any_port.matches("api.example.com", None));
        assert!(any_port.matches("api.example.com", Some(8080)));
        assert!(!any_port.matches("evil.example.com", None));
        let one_port = AllowedHost::parse("127.0.0.1:7878").expect("with port");
        assert!(one_port.matches("127.0.0.1", Some(7878)));
        assert!(!one_port.matches("127.0.0.1", Some(7879)));
        assert!(!one_port.matches("127.0.0.1", None));
        assert!(
            AllowedHost::parse("[::1]:7878")
                .expect("v6")
                .matches("[::1]", Some(7878))
        );
        for bad in [
            "",
            "http://example.com",
            "example.com/path",
            "exa mple.com",
            "example.com:",
            "example.com:99999",
            "[::1",
            "[nope]",
            "-bad.example",
            "a..b",
            "**",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_headers_split_into_host_and_port() {
        assert_eq!(
            split_host("LocalHost:7878"),
            Some(("localhost".into(), Some(7878)))
        );
        assert_eq!(split_host("localhost."), Some(("localhost".into(), None)));
        assert_eq!(split_host("[::1]:80"), Some(("[::1]".into(), Some(80))));
        assert_eq!(split_host("[::1]"), Some(("[::1]".into(), None)));
        for bad in ["", ":80", "a:b", "[::1]x", "[::1]:", "h:1:2", "h:+1"] {
            assert_eq!(split_host(bad), None, "{bad}");
        }
    }
}
