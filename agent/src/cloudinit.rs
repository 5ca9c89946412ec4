//! The network configuration a deploy injects: validated before anything
//! is touched, rendered as cloud-init NoCloud files (`meta-data`,
//! `network-config` version 2, `user-data`) on a vfat volume labelled
//! `cidata`.

use std::{
    fmt::Write as _,
    io::{Seek, Write},
    net::IpAddr,
};

/// A validation failure, phrased for the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(s: impl Into<String>) -> Invalid {
    Invalid(s.into())
}

/// One NIC's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    /// `(address, prefix)`; empty means DHCP.
    pub addresses: Vec<(IpAddr, u8)>,
    /// IPv4 default gateway.
    pub gateway4: Option<IpAddr>,
    /// IPv6 default gateway.
    pub gateway6: Option<IpAddr>,
    /// DNS servers.
    pub nameservers: Vec<IpAddr>,
    /// DNS search domains.
    pub search_domains: Vec<String>,
    /// The NIC's MAC.
    pub mac: String,
    /// Gateways outside the addresses' subnets are reachable on the link.
    pub gateway_on_link: bool,
}

/// Everything the seed holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// Fresh per deploy: cloud-init runs its per-instance steps again.
    pub instance_id: String,
    /// Guest host name.
    pub hostname: String,
    /// One per NIC, in order.
    pub interfaces: Vec<Interface>,
    /// cloud-init user-data; empty: an empty `#cloud-config`.
    pub user_data: String,
}

/// Parse `192.0.2.10/24` or `2001:db8::10/64`.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), Invalid> {
    let (a, p) = s.split_once('/').ok_or_else(|| {
        invalid(format!(
            "address {s:?} needs a prefix length, like 192.0.2.10/24"
        ))
    })?;
    let addr: IpAddr = a
        .parse()
        .map_err(|_| invalid(format!("{a:?} in {s:?} is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| *p <= max && *p > 0)
        .ok_or_else(|| invalid(format!("prefix length {p:?} in {s:?} must be 1 to {max}")))?;
    if addr.is_unspecified() || addr.is_multicast() {
        return Err(invalid(format!("{s:?} is not a usable host address")));
    }
    Ok((addr, prefix))
}

/// Whether `addr` lies in `net`/`prefix` (same family).
fn in_subnet(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// A gateway must be reachable: inside the subnet of one of the NIC's
/// static addresses of its family, or marked on-link by the caller. A
/// gateway with no static address of its family would be ignored by the
/// guest, so it is refused too.
pub fn check_gateway(addresses: &[(IpAddr, u8)], gw: IpAddr, on_link: bool) -> Result<(), Invalid> {
    let same_family: Vec<&(IpAddr, u8)> = addresses
        .iter()
        .filter(|(a, _)| a.is_ipv4() == gw.is_ipv4())
        .collect();
    if same_family.is_empty() {
        return Err(invalid(format!(
            "gateway {gw} needs a static address of its family on the NIC (with DHCP the gateway comes from DHCP)"
        )));
    }
    if same_family.iter().any(|(a, _)| *a == gw) {
        return Err(invalid(format!("gateway {gw} is the NIC's own address")));
    }
    if on_link || same_family.iter().any(|(a, p)| in_subnet(gw, *a, *p)) {
        return Ok(());
    }
    let nets: Vec<String> = same_family
        .iter()
        .map(|(a, p)| format!("{a}/{p}"))
        .collect();
    Err(invalid(format!(
        "gateway {gw} is outside the subnet of {}; the guest could not reach it (mark it on-link if the network routes it: onlink=yes)",
        nets.join(", ")
    )))
}

/// Parse and normalise a MAC (`52:54:00:12:34:56`); unicast only.
pub fn parse_mac(s: &str) -> Result<String, Invalid> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let bytes: Option<Vec<u8>> = (parts.len() == 6)
        .then(|| {
            parts
                .iter()
                .map(|p| {
                    (p.len() == 2)
                        .then(|| u8::from_str_radix(p, 16).ok())
                        .flatten()
                })
                .collect()
        })
        .flatten();
    let bytes = bytes
        .ok_or_else(|| invalid(format!("{s:?} is not a MAC address like 52:54:00:12:34:56")))?;
    if bytes[0] & 1 == 1 {
        return Err(invalid(format!(
            "{s:?} is a multicast MAC; a NIC needs a unicast one"
        )));
    }
    if bytes.iter().all(|b| *b == 0) {
        return Err(invalid("the all-zero MAC is not usable"));
    }
    Ok(bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// A fresh locally administered unicast MAC in QEMU's 52:54:00 range.
pub fn random_mac() -> String {
    let u = uuid::Uuid::new_v4();
    let b = u.as_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// RFC 1123 host name or FQDN, at most 253 characters.
pub fn validate_hostname(h: &str) -> Result<(), Invalid> {
    let bad = || {
        invalid(format!(
            "{h:?} is not a valid host name (letters, digits and '-', labels of 1-63 characters, separated by dots)"
        ))
    };
    if h.is_empty() || h.len() > 253 {
        return Err(bad());
    }
    for label in h.split('.') {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad());
        }
    }
    Ok(())
}

fn quote(s: &str) -> String {
    // JSON strings are valid YAML scalars.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl Seed {
    /// `meta-data`.
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            quote(&self.instance_id),
            quote(&self.hostname)
        )
    }

    /// `network-config`, version 2, NICs matched by MAC.
    pub fn network_config(&self) -> String {
        let mut y = String::from("version: 2\nethernets:\n");
        for (i, nic) in self.interfaces.iter().enumerate() {
            let _ = writeln!(y, "  nic{i}:");
            let _ = writeln!(y, "    match:\n      macaddress: {}", quote(&nic.mac));
            if nic.addresses.is_empty() {
                y.push_str("    dhcp4: true\n    dhcp6: false\n");
            } else {
                y.push_str("    dhcp4: false\n    dhcp6: false\n    addresses:\n");
                for (a, p) in &nic.addresses {
                    let _ = writeln!(y, "      - {}", quote(&format!("{a}/{p}")));
                }
                let gws: Vec<&IpAddr> = nic.gateway4.iter().chain(nic.gateway6.iter()).collect();
                if !gws.is_empty() {
                    y.push_str("    routes:\n");
                    for g in gws {
                        let to = if g.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                        let _ = writeln!(
                            y,
                            "      - to: {}\n        via: {}",
                            quote(to),
                            quote(&g.to_string())
                        );
                        if nic.gateway_on_link {
                            y.push_str("        on-link: true\n");
                        }
                    }
                }
            }
            if !nic.nameservers.is_empty() || !nic.search_domains.is_empty() {
                y.push_str("    nameservers:\n");
                if !nic.nameservers.is_empty() {
                    let list: Vec<String> = nic
                        .nameservers
                        .iter()
                        .map(|n| quote(&n.to_string()))
                        .collect();
                    let _ = writeln!(y, "      addresses: [{}]", list.join(", "));
                }
                if !nic.search_domains.is_empty() {
                    let list: Vec<String> = nic.search_domains.iter().map(|n| quote(n)).collect();
                    let _ = writeln!(y, "      search: [{}]", list.join(", "));
                }
            }
        }
        y
    }

    /// `user-data` (cloud-init ignores a seed without one).
    pub fn user_data(&self) -> String {
        if self.user_data.is_empty() {
            "#cloud-config\n{}\n".into()
        } else {
            self.user_data.clone()
        }
    }

    /// Write the seed as a vfat filesystem labelled `cidata` into `dev`
    /// (sized by the caller; 1 MiB is plenty).
    pub fn write_vfat<T: std::io::Read + Write + Seek>(&self, dev: &mut T) -> std::io::Result<()> {
        let id = u32::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..4]
                .try_into()
                .unwrap_or([1, 2, 3, 4]),
        );
        fatfs::format_volume(
            &mut *dev,
            fatfs::FormatVolumeOptions::new()
                .volume_label(*b"cidata     ")
                .volume_id(id),
        )?;
        let fs = fatfs::FileSystem::new(&mut *dev, fatfs::FsOptions::new())?;
        {
            let root = fs.root_dir();
            for (name, body) in [
                ("meta-data", self.meta_data()),
                ("network-config", self.network_config()),
                ("user-data", self.user_data()),
            ] {
                let mut f = root.create_file(name)?;
                f.truncate()?;
                f.write_all(body.as_bytes())?;
                f.flush()?;
            }
        }
        fs.unmount()
    }
}

/// Check user-data looks like something cloud-init runs.
pub fn validate_user_data(u: &str) -> Result<(), Invalid> {
    imprint_proto::limits::check_user_data(u).map_err(Invalid)?;
    if u.is_empty()
        || u.starts_with("#cloud-config")
        || u.starts_with("#!")
        || u.starts_with("Content-Type: multipart")
    {
        Ok(())
    } else {
        Err(invalid(
            "user-data must start with \"#cloud-config\", \"#!\" or be a MIME multipart document",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_macs_hostnames() {
        assert_eq!(
            parse_cidr("192.0.2.10/24").expect("v4"),
            ("192.0.2.10".parse().expect("ip"), 24)
        );
        assert_eq!(parse_cidr("2001:db8::10/64").expect("v6").1, 64);
        for bad in [
            "192.0.2.10",
            "192.0.2.10/33",
            "192.0.2.10/0",
            "300.1.1.1/24",
            "0.0.0.0/8",
            "x/24",
            "2001:db8::1/129",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_mac("52-54-00-AB-cd-01").expect("mac"),
            "52:54:00:ab:cd:01"
        );
        for bad in [
            "52:54:00:ab:cd",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "zz:54:00:ab:cd:01",
            "525400abcd01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        let m = random_mac();
        assert_eq!(parse_mac(&m).expect("random mac"), m);
        assert!(validate_hostname("web-2.example.com").is_ok());
        for bad in ["", "-a", "a-", "a..b", "a_b", &"x".repeat(64)] {
            assert!(validate_hostname(bad).is_err(), "{bad}");
        }
        assert!(validate_user_data("#cloud-config\nruncmd: []").is_ok());
        let v4 = [parse_cidr("10.0.0.5/24").expect("v4")];
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        assert!(check_gateway(&v4, ip("10.0.0.1"), false).is_ok());
        assert!(check_gateway(&v4, ip("192.168.7.1"), false).is_err());
        assert!(check_gateway(&v4, ip("192.168.7.1"), true).is_ok());
        assert!(
            check_gateway(&v4, ip("10.0.0.5"), false).is_err(),
            "own address"
        );
        assert!(check_gateway(&[], ip("10.0.0.1"), false).is_err(), "DHCP");
        let v6 = [parse_cidr("2001:db8::10/64").expect("v6")];
        assert!(check_gateway(&v6, ip("2001:db8::1"), false).is_ok());
        assert!(check_gateway(&v6, ip("2001:db9::1"), false).is_err());
        assert!(
            check_gateway(&v4, ip("2001:db8::1"), false).is_err(),
            "family"
        );
        let host32 = [parse_cidr("203.0.113.7/32").expect("/32")];
        assert!(check_gateway(&host32, ip("203.0.113.1"), true).is_ok());
        assert!(validate_user_data("hello").is_err());
    }

    fn seed() -> Seed {
        Seed {
            instance_id: "i-123".into(),
            hostname: "web-2".into(),
            interfaces: vec![
                Interface {
                    addresses: vec![
                        parse_cidr("192.0.2.10/24").expect("a"),
                        parse_cidr("2001:db8::10/64").expect("a"),
                    ],
                    gateway4: Some("192.0.2.1".parse().expect("gw")),
                    gateway6: None,
                    nameservers: vec!["192.0.2.53".parse().expect("ns")],
                    search_domains: vec!["example.com".into()],
                    mac: "52:54:00:00:00:01".into(),
                    gateway_on_link: false,
                },
                Interface {
                    mac: "52:54:00:00:00:02".into(),
                    ..Default::default()
                },
            ],
            user_data: String::new(),
        }
    }

    #[test]
    fn network_config_v2() {
        let y = seed().network_config();
        let expected = r#"version: 2
ethernets:
  nic0:
    match:
      macaddress: "52:54:00:00:00:01"
    dhcp4: false
    dhcp6: false
    addresses:
      - "192.0.2.10/24"
      - "2001:db8::10/64"
    routes:
      - to: "0.0.0.0/0"
        via: "192.0.2.1"
    nameservers:
      addresses: ["192.0.2.53"]
      search: ["example.com"]
  nic1:
    match:
      macaddress: "52:54:00:00:00:02"
    dhcp4: true
    dhcp6: false
"#;
        assert_eq!(y, expected);
        assert_eq!(
            seed().meta_data(),
            "instance-id: \"i-123\"\nlocal-hostname: \"web-2\"\n"
        );
    }

    #[test]
    fn vfat_seed_holds_the_files() {
        let mut img = std::io::Cursor::new(vec![0u8; 1 << 20]);
        seed().write_vfat(&mut img).expect("write");
        img.set_position(0);
        let fs = fatfs::FileSystem::new(&mut img, fatfs::FsOptions::new()).expect("mount");
        assert_eq!(fs.volume_label().trim(), "cidata");
        let mut s = String::new();
        std::io::Read::read_to_string(
            &mut fs.root_dir().open_file("network-config").expect("open"),
            &mut s,
        )
        .expect("read");
        assert!(s.contains("192.0.2.10/24"));
    }
}
