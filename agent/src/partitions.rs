//! What an imported disk holds at its start: a partition table (MBR or
//! GPT), an EFI system partition, or a filesystem on the whole disk. Read
//! from the first sectors only, without mounting anything: enough to know
//! whether the disk can boot with UEFI and to warn about disks nothing can
//! boot from. (A full image lint is a separate, later step.)

use imprint_store::source::DiskSource;

/// The start of a disk, as far as booting is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// `mbr`, `gpt`, or `None`.
    pub table: Option<&'static str>,
    /// An EFI system partition is in the table.
    pub esp: bool,
    /// A filesystem that spans the whole disk (`ext`, `xfs`, `vfat`).
    pub whole_disk_fs: Option<&'static str>,
}

impl Layout {
    /// What an importer should hear about this disk.
    pub fn warnings(&self) -> Vec<String> {
        if self.table.is_none() && self.whole_disk_fs.is_none() {
            vec![
                "the disk has no partition table and no filesystem imprint recognises: it may not boot"
                    .into(),
            ]
        } else if self.table.is_none() {
            vec![
                "the disk is one filesystem without a partition table or bootloader: it boots only with a kernel given by the host"
                    .into(),
            ]
        } else {
            Vec::new()
        }
    }
}

/// ESP partition type GUID C12A7328-F81F-11D2-BA4B-00A0C93EC93B, as stored.
const ESP_GUID: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

/// Inspect the first 64 KiB of `source` (what is not readable counts as
/// absent).
pub fn inspect(source: &mut dyn DiskSource) -> Layout {
    let len = source.size_bytes().min(64 * 1024) as usize;
    let mut head = vec![0u8; len];
    if len < 2048 || source.read_exact_at(0, &mut head).is_err() {
        return Layout::default();
    }
    inspect_bytes(&head)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// [`inspect`] on bytes from the start of a disk.
pub fn inspect_bytes(head: &[u8]) -> Layout {
    let mut l = Layout::default();
    if head.get(1024 + 56..1024 + 58) == Some(&[0x53, 0xef]) {
        l.whole_disk_fs = Some("ext");
    } else if head.starts_with(b"XFSB") {
        l.whole_disk_fs = Some("xfs");
    }
    if head.get(510..512) != Some(&[0x55, 0xaa]) {
        return l;
    }
    let mbr_types: Vec<u8> = (0..4).map(|i| head[446 + 16 * i + 4]).collect();
    if head.get(512..520) == Some(b"EFI PART") {
        l.table = Some("gpt");
        l.whole_disk_fs = None;
        let (Some(entries_lba), Some(count), Some(size)) = (
            u64_at(head, 512 + 72),
            u32_at(head, 512 + 80),
            u32_at(head, 512 + 84),
        ) else {
            return l;
        };
        // Hostile headers: every number is checked against what was read.
        let (Some(start), Ok(size)) = (
            usize::try_from(entries_lba)
                .ok()
                .and_then(|l| l.checked_mul(512)),
            usize::try_from(size),
        ) else {
            return l;
        };
        if size < 16 || start >= head.len() {
            return l;
        }
        let count = (count as usize).min((head.len() - start) / size);
        l.esp = (0..count).any(|i| {
            let at = start + i * size;
            head.get(at..at + 16) == Some(&ESP_GUID[..])
        });
    } else if mbr_types.iter().any(|t| *t != 0) {
        // A FAT boot sector also ends in 55 AA: only a table with types counts.
        if head.get(54..57) == Some(b"FAT") || head.get(82..87) == Some(b"FAT32") {
            l.whole_disk_fs = Some("vfat");
            return l;
        }
        l.table = Some("mbr");
        l.whole_disk_fs = None;
        l.esp = mbr_types.contains(&0xef);
    } else if head.get(54..57) == Some(b"FAT") || head.get(82..87) == Some(b"FAT32") {
        l.whole_disk_fs = Some("vfat");
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr(types: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 64 * 1024];
        for (i, t) in types.iter().enumerate() {
            b[446 + 16 * i + 4] = *t;
        }
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    #[test]
    fn tables_esps_and_bare_filesystems() {
        let l = inspect_bytes(&mbr(&[0x83]));
        assert_eq!((l.table, l.esp), (Some("mbr"), false));
        assert!(l.warnings().is_empty());
        assert!(inspect_bytes(&mbr(&[0xef, 0x83])).esp);
        let mut gpt = mbr(&[0xee]);
        gpt[512..520].copy_from_slice(b"EFI PART");
        gpt[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        gpt[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        gpt[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        let l = inspect_bytes(&gpt);
        assert_eq!((l.table, l.esp), (Some("gpt"), false));
        gpt[1024 + 128..1024 + 144].copy_from_slice(&ESP_GUID);
        assert!(inspect_bytes(&gpt).esp);
        // Hostile numbers neither panic nor loop for long.
        let mut hostile = gpt.clone();
        hostile[512 + 72..512 + 80].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(!inspect_bytes(&hostile).esp);
        let mut hostile = gpt.clone();
        hostile[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
        hostile[512 + 84..512 + 88].copy_from_slice(&16u32.to_le_bytes());
        inspect_bytes(&hostile);
        hostile[512 + 84..512 + 88].copy_from_slice(&u32::MAX.to_le_bytes());
        inspect_bytes(&hostile);
        let mut ext = vec![0u8; 64 * 1024];
        ext[1024 + 56] = 0x53;
        ext[1024 + 57] = 0xef;
        let l = inspect_bytes(&ext);
        assert_eq!((l.table, l.whole_disk_fs), (None, Some("ext")));
        assert_eq!(l.warnings().len(), 1);
        let blank = inspect_bytes(&[0u8; 4096]);
        assert_eq!(blank, Layout::default());
        assert!(blank.warnings()[0].contains("may not boot"));
    }
}
