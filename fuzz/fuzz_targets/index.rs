//! Fixed indexes: any bytes parse or fail cleanly; what parses re-encodes
//! to the same bytes.
#![no_main]

use imprint_store::FixedIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = FixedIndex::decode(data) {
        assert_eq!(idx.encode(), data);
    }
});
