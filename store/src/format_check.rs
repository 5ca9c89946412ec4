//! Shared checks for the magics declared in [`crate::format`].

use crate::{
    Error, ErrorKind, Result,
    format::{MAGIC_LEN, same_family},
};

/// Accept exactly `expected`; tell a newer version from a foreign file.
pub(crate) fn magic(found: &[u8], expected: &[u8; MAGIC_LEN], what: &str) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    if same_family(found, expected) {
        return Err(Error::new(
            ErrorKind::UnsupportedVersion,
            format!(
                "{what} has format version {}, this build reads version {}; upgrade imprint",
                found[MAGIC_LEN - 1],
                expected[MAGIC_LEN - 1]
            ),
        ));
    }
    Err(Error::corrupt(format!("{what} has a wrong magic number")))
}
