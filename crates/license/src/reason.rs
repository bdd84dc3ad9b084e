//! Why a seat came back without a release, and why a request was refused.

use serde::Serialize;
use std::fmt;

/// Defines a reason enum with a stable kebab-case name per variant and a
/// fixed-size counter array indexed by it.
macro_rules! reasons {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every reason, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stable kebab-case name used in reports and the ledger.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// Parses the stable name back into a reason.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

reasons! {
    /// Why the host took a seat back instead of the plugin sending it back.
    ReclaimReason {
        /// The invocation returned while the plugin still held the lease.
        InvocationEnded => "invocation-ended",
        /// The plugin trapped while holding the lease.
        Trapped => "trapped",
        /// The plugin ran past its time limit while holding the lease.
        TimedOut => "timed-out",
        /// The operator revoked the license (or the seat's grant) while the seat was held.
        Revoked => "revoked",
        /// The seat's grant expired while the seat was held.
        Expired => "expired",
        /// The store holding the lease was dropped without an orderly end.
        StoreDropped => "store-dropped",
        /// The host stopped while the lease was held and found it on restart.
        HostRestart => "host-restart",
        /// The shared store's batch the seat came from lapsed (not renewed
        /// in time) while the seat was held: another host may have it now.
        LeaseLapsed => "lease-lapsed",
    }
}

reasons! {
    /// Why a license request was refused; mirrors WIT `license-error`.
    Denial {
        /// No license with this id on this host.
        UnknownLicense => "unknown-license",
        /// Every seat is in use.
        Exhausted => "exhausted",
        /// Outside the license's validity window.
        Expired => "expired",
        /// A rule forbids this plugin that license.
        NotEntitled => "not-entitled",
        /// Waited for a seat; none came free in time.
        TimedOut => "timed-out",
        /// Withdrawn by the operator.
        Revoked => "revoked",
    }
}

/// A count per reason, serialized as `{reason: n}` with every reason present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReasonCounts<R: 'static> {
    counts: Vec<u64>,
    all: &'static [R],
}

impl<R: Copy + PartialEq + 'static> ReasonCounts<R> {
    fn with(all: &'static [R]) -> Self {
        Self {
            counts: vec![0; all.len()],
            all,
        }
    }

    fn index(&self, reason: R) -> usize {
        self.all.iter().position(|r| *r == reason).unwrap_or(0)
    }

    /// Adds `n` to the count for `reason`.
    pub fn add(&mut self, reason: R, n: u64) {
        let i = self.index(reason);
        self.counts[i] += n;
    }

    /// The count for one reason.
    pub fn get(&self, reason: R) -> u64 {
        self.counts[self.index(reason)]
    }

    /// The sum over all reasons.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Each reason with its count, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (R, u64)> + '_ {
        self.all.iter().copied().zip(self.counts.iter().copied())
    }
}

impl Default for ReasonCounts<ReclaimReason> {
    fn default() -> Self {
        Self::with(ReclaimReason::ALL)
    }
}

impl Default for ReasonCounts<Denial> {
    fn default() -> Self {
        Self::with(Denial::ALL)
    }
}

impl<R: Copy + PartialEq + fmt::Display + 'static> Serialize for ReasonCounts<R> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.counts.len()))?;
        for (reason, n) in self.iter() {
            map.serialize_entry(&reason.to_string(), &n)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in ReclaimReason::ALL {
            assert_eq!(ReclaimReason::from_name(r.as_str()), Some(*r));
        }
        for d in Denial::ALL {
            assert_eq!(Denial::from_name(d.as_str()), Some(*d));
        }
        assert_eq!(Denial::from_name("nope"), None);
    }

    #[test]
    fn counts_serialize_every_reason() {
        let mut c = ReasonCounts::<ReclaimReason>::default();
        c.add(ReclaimReason::Trapped, 2);
        let json = serde_json::to_value(&c).expect("serializes");
        assert_eq!(json["trapped"], 2);
        assert_eq!(json["host-restart"], 0);
        assert_eq!(
            json.as_object().map(|m| m.len()),
            Some(ReclaimReason::ALL.len())
        );
        assert_eq!(c.total(), 2);
    }
}
