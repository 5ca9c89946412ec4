//! Manifests: any bytes parse or fail cleanly; what parses survives a
//! round trip.
#![no_main]

use imprint_store::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        let again = m.encode().expect("a parsed manifest encodes");
        assert_eq!(Manifest::decode(&again).expect("re-parse"), m);
    }
});
