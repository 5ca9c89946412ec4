//! Chunk blobs come from the store (a shared filesystem or an object
//! store): any bytes must give a blob or an error, never a panic, and a
//! blob that decodes must hash to the digest it was asked for.
#![no_main]

use imprint_store::{ChunkDigest, blob::{BlobDecoder, check_blob}};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = check_blob(data);
    let mut out = Vec::new();
    let digest = ChunkDigest::of(b"fuzz");
    if let Ok(mut dec) = BlobDecoder::new()
        && dec.decode_into(data, &digest, &mut out).is_ok()
    {
        assert_eq!(ChunkDigest::of(&out), digest);
    }
});
