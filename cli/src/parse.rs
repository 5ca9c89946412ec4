//! Parsers of flag values (clap `value_parser`s): sizes, NIC settings,
//! durations. Their errors are what clap prints after "invalid value".

use std::time::Duration;

use imprint_proto::v1 as pb;

/// [`size`] that also takes 0.
pub fn size_or_zero(s: &str) -> Result<u64, String> {
    if s == "0" { Ok(0) } else { size(s) }
}

/// `20G`, `512MiB`, `1T`, `4096`: binary units (like qemu-img).
pub fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 20G, 512MiB, 1T)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G, T)")),
    };
    let v = n * mult as f64;
    if !(v.is_finite() && v >= 1.0 && v < u64::MAX as f64) {
        return Err(format!("{s:?} must be a positive size"));
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "`v` is finite and within [1, u64::MAX) (checked above); dropping a fraction of a byte is intended"
    )]
    let size_bytes = v as u64;
    Ok(size_bytes)
}

/// One `--nic`: `addr=192.0.2.10/24,gw4=192.0.2.1,dns=...,onlink=yes`.
pub fn nic(s: &str) -> Result<pb::InterfaceConfig, String> {
    let mut nic = pb::InterfaceConfig::default();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        match k {
            "addr" => nic.addresses.push(v.into()),
            "gw4" => nic.gateway4 = v.into(),
            "gw6" => nic.gateway6 = v.into(),
            "dns" => nic.nameservers.push(v.into()),
            "search" => nic.search_domains.push(v.into()),
            "mac" => nic.mac_address = v.into(),
            "onlink" => {
                nic.gateway_on_link = match v {
                    "yes" | "true" => true,
                    "no" | "false" => false,
                    _ => return Err(format!("onlink={v:?}: write onlink=yes or onlink=no")),
                }
            }
            other => {
                return Err(format!(
                    "unknown NIC setting {other:?} (addr, gw4, gw6, dns, search, mac, onlink)"
                ));
            }
        }
    }
    Ok(nic)
}

/// `30s`, `10m`, `1h`, `2d`, `0` (seconds without a unit).
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1),
        Some((i, _)) => {
            let mult = match &s[i..] {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                u => return Err(format!("unknown unit {u:?}; use s, m, h or d")),
            };
            (&s[..i], mult)
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 10m, 1h"))?;
    Ok(Duration::from_secs(n * mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("20G"), Ok(20 << 30));
        assert_eq!(size("512MiB"), Ok(512 << 20));
        assert_eq!(size("1.5k"), Ok(1536));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("2 TiB"), Ok(2 << 40));
        for bad in ["", "G", "-1G", "0", "12Q", "1e3G"] {
            assert!(size(bad).is_err(), "{bad}");
        }
        assert_eq!(size_or_zero("0"), Ok(0));
    }

    #[test]
    fn nics() {
        let n = nic("addr=192.0.2.10/24,gw4=192.0.2.1,dns=192.0.2.53,dns=192.0.2.54").expect("nic");
        assert_eq!(n.addresses, ["192.0.2.10/24"]);
        assert_eq!(n.gateway4, "192.0.2.1");
        assert_eq!(n.nameservers.len(), 2);
        assert!(nic("ip=1.2.3.4").is_err());
        assert!(nic("addr").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(duration("5y").is_err());
        assert!(duration("h").is_err());
    }
}
