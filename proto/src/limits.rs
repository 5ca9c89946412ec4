//! Limits every side checks the same way (CLI before sending, the daemon at
//! its edge, the agent before it writes).

/// cloud-init user-data: it must fit the 1 MiB NoCloud seed volume with
/// the meta-data and network-config beside it, and it stays far below
/// the 4 MiB gRPC message limit so the caller hears this limit, not the
/// transport's.
pub const MAX_USER_DATA_BYTES: usize = 512 * 1024;

/// Refuse user-data over [`MAX_USER_DATA_BYTES`], in words for people.
pub fn check_user_data(user_data: &str) -> Result<(), String> {
    if user_data.len() > MAX_USER_DATA_BYTES {
        return Err(format!(
            "user-data is {} bytes; at most {} bytes (512 KiB) fit the cloud-init seed",
            user_data.len(),
            MAX_USER_DATA_BYTES
        ));
    }
    Ok(())
}

/// The most vCPUs a guest may ask for.
pub const MAX_VCPUS: u32 = 1024;
/// The most memory a guest may ask for, in MiB (16 TiB).
pub const MAX_MEMORY_MIB: u64 = 16 << 20;
/// The least memory a guest may ask for, in MiB.
pub const MIN_MEMORY_MIB: u64 = 16;

/// A guest's vCPU count (0: the image's or profile's).
pub fn check_vcpus(vcpus: u32) -> Result<(), String> {
    if vcpus > MAX_VCPUS {
        return Err(format!("{vcpus} vCPUs is more than {MAX_VCPUS}"));
    }
    Ok(())
}

/// A guest's memory in MiB (0: the image's or profile's).
pub fn check_memory_mib(memory_mib: u64) -> Result<(), String> {
    if memory_mib != 0 && !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
        return Err(format!(
            "memory_mib {memory_mib} must be between 16 MiB and 16 TiB"
        ));
    }
    Ok(())
}

/// A new guest's name, as libvirt and imprint's volume names take it:
/// 1-64 letters, digits, `-`, `_` or `.`, not starting with `-` or `.`.
pub fn check_guest_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "guest name {name:?} must be 1-64 letters, digits, '-', '_' or '.', not starting with '-' or '.'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_names() {
        for good in ["web1", "a", "db_2.prod", &"x".repeat(64)] {
            assert_eq!(check_guest_name(good), Ok(()), "{good}");
        }
        for bad in ["", "-rf", ".hidden", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(check_guest_name(bad).is_err(), "{bad:?}");
        }
    }
}
