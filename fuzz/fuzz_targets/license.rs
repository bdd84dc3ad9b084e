//! License files come from issuers and operators: parsing any bytes must
//! either fail with a message or give a license that round-trips and can
//! be verified without panicking. Issuer key files (`tollgate trust add`)
//! are read by the same rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::license::issuer::{IssuerKey, IssuerPublicKey, SignedLicense};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = IssuerPublicKey::from_file_text(text) {
        assert!(!e.to_string().is_empty());
    }
    if let Err(e) = IssuerKey::from_file_text(text) {
        assert!(!e.to_string().is_empty());
    }
    match SignedLicense::parse(text) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(license) => {
            let again = SignedLicense::parse(&license.to_file_text())
                .expect("a parsed license re-parses from its own text");
            assert_eq!(again.to_file_text(), license.to_file_text());
            // No input can carry a valid signature of this fixed key.
            let key = IssuerKey::from_file_text(
                "tollgate-issuer-secret-key v1\nsecret: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
            )
            .expect("the fixed key parses");
            assert!(license.verify(&[key.public()], 0).is_err());
        }
    }
});
