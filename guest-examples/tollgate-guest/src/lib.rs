//! `tollgate-guest`: the plugin author's side of tollgate.
//!
//! A plugin is a Wasm component of the world `tollgate:plugin/service-offer`.
//! This crate generates the bindings for you, wraps a license lease in a
//! guard that sends its seat back when dropped, and exports your service
//! from a plain function:
//!
//! ```ignore
//! fn greet(input: &[u8]) -> Result<Vec<u8>, String> {
//!     let _seat = tollgate_guest::acquire("demo").map_err(|e| e.to_string())?;
//!     Ok(format!("hello, {}!", String::from_utf8_lossy(input)).into_bytes())
//! }
//! tollgate_guest::service!(greet);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`. The macro also
//! records the WIT version in the component, so a host built for another
//! version refuses the plugin with a message naming both versions.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "service-offer",
        pub_export_macro: true,
        export_macro_name: "__export_service_offer",
        default_bindings_module: "tollgate_guest::bindings",
    });
}

use bindings::tollgate::plugin::licensing;
use std::fmt;

/// The `tollgate:plugin` WIT package version this SDK is built against.
pub const WIT_VERSION: &str = "0.1.0";

#[doc(hidden)]
pub const WIT_VERSION_LEN: usize = WIT_VERSION.len();

#[doc(hidden)]
pub const WIT_VERSION_BYTES: [u8; WIT_VERSION_LEN] = {
    let src = WIT_VERSION.as_bytes();
    let mut out = [0u8; WIT_VERSION_LEN];
    let mut i = 0;
    while i < src.len() {
        out[i] = src[i];
        i += 1;
    }
    out
};

/// Why the host refused a license request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LicenseError {
    /// No license with that id is installed.
    UnknownLicense,
    /// Every seat is taken.
    Exhausted,
    /// The license is outside its validity window.
    Expired,
    /// This plugin may not use that license.
    NotEntitled,
    /// No seat came free within the plugin's wait.
    TimedOut,
    /// The operator revoked the license.
    Revoked,
}

impl From<licensing::LicenseError> for LicenseError {
    fn from(e: licensing::LicenseError) -> Self {
        use licensing::LicenseError as E;
        match e {
            E::UnknownLicense => Self::UnknownLicense,
            E::Exhausted => Self::Exhausted,
            E::Expired => Self::Expired,
            E::NotEntitled => Self::NotEntitled,
            E::TimedOut => Self::TimedOut,
            E::Revoked => Self::Revoked,
        }
    }
}

impl fmt::Display for LicenseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownLicense => "no such license is installed",
            Self::Exhausted => "every seat is taken",
            Self::Expired => "the license is not valid now",
            Self::NotEntitled => "this plugin may not use that license",
            Self::TimedOut => "no seat came free in time",
            Self::Revoked => "the license was revoked",
        })
    }
}

impl std::error::Error for LicenseError {}

/// A license id with the error that refused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The license id asked for.
    pub license_id: String,
    /// Why the host refused it.
    pub error: LicenseError,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "license {} was refused: {}", self.license_id, self.error)
    }
}

impl std::error::Error for Refused {}

/// What the host says about a license.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LicenseInfo {
    /// Its id.
    pub id: String,
    /// Seats issued; `None` when uncounted.
    pub seats: Option<u32>,
    /// Seats held right now, host-wide.
    pub in_use: u32,
    /// Expiry, seconds since the Unix epoch, if any.
    pub expires_at: Option<u64>,
}

/// A held seat. Dropping it sends the license back; [`Lease::release`] does
/// so explicitly. The seat itself stays with the call until the call ends
/// (so sending it back early frees nothing for other calls, and asking for
/// the same license again in this call gets that seat back). A lease still
/// held when the call ends is reclaimed by the host.
#[derive(Debug)]
pub struct Lease {
    handle: Option<licensing::Lease>,
    license_id: String,
}

impl Lease {
    /// The license id this is a seat of.
    pub fn license_id(&self) -> &str {
        &self.license_id
    }

    /// Whether the seat is still valid (not revoked, not expired).
    pub fn is_valid(&self) -> bool {
        self.handle.as_ref().is_some_and(licensing::Lease::valid)
    }

    /// Sends the license back now; the seat returns to the pool when the
    /// call ends.
    pub fn release(mut self) {
        if let Some(handle) = self.handle.take() {
            licensing::release(handle);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            licensing::release(handle);
        }
    }
}

/// Asks the host for a seat of `license_id`.
pub fn acquire(license_id: &str) -> Result<Lease, Refused> {
    match licensing::acquire(license_id) {
        Ok(handle) => Ok(Lease {
            handle: Some(handle),
            license_id: license_id.to_string(),
        }),
        Err(e) => Err(Refused {
            license_id: license_id.to_string(),
            error: e.into(),
        }),
    }
}

/// The license ids this plugin may use that the host has installed.
pub fn license_ids() -> Vec<String> {
    licensing::license_ids()
}

/// A seat of every license this plugin may use, or the first refusal (the
/// seats taken so far go back).
pub fn acquire_all() -> Result<Vec<Lease>, Refused> {
    license_ids().iter().map(|id| acquire(id)).collect()
}

/// Terms and seats in use of `license_id`.
pub fn describe(license_id: &str) -> Result<LicenseInfo, Refused> {
    match licensing::describe(license_id) {
        Ok(info) => Ok(LicenseInfo {
            id: info.id,
            seats: info.seats,
            in_use: info.in_use,
            expires_at: info.expires_at,
        }),
        Err(e) => Err(Refused {
            license_id: license_id.to_string(),
            error: e.into(),
        }),
    }
}

/// Exports `$handler`, a `fn(&[u8]) -> Result<Vec<u8>, String>`, as the
/// plugin's service, and records the WIT version in the component.
#[macro_export]
macro_rules! service {
    ($handler:path) => {
        #[doc(hidden)]
        pub struct __TollgateService;

        impl $crate::bindings::exports::tollgate::plugin::service::Guest for __TollgateService {
            fn invoke(input: ::std::vec::Vec<u8>) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                $handler(&input)
            }
        }

        $crate::bindings::__export_service_offer!(__TollgateService with_types_in $crate::bindings);

        // Only in the component: native builds (e.g. for `cargo test`) skip it.
        #[doc(hidden)]
        #[cfg(target_family = "wasm")]
        #[used]
        #[unsafe(link_section = "tollgate:wit-version")]
        static __TOLLGATE_WIT_VERSION: [u8; $crate::WIT_VERSION_LEN] = $crate::WIT_VERSION_BYTES;
    };
}
