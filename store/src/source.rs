//! Where capture reads from and deploy writes to: small capability traits,
//! with implementations for files and block devices and adapters for any
//! `Read + Seek` / `Write + Seek`.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::{FileExt, FileTypeExt},
    path::Path,
};

use nix::{
    errno::Errno,
    fcntl::{FallocateFlags, fallocate},
    unistd::{Whence, lseek},
};

/// A disk as the guest sees it, to capture.
pub trait DiskSource: Send {
    /// Guest-visible size in bytes.
    fn size_bytes(&self) -> u64;
    /// Fill `buf` from `offset` (the range lies within the disk).
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Whether `[offset, offset + len)` may hold non-zero bytes. Sources
    /// that know their holes (sparse files, qcow2 allocation maps) answer
    /// `false` for unallocated ranges so they are never read.
    fn may_have_data(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        let _ = (offset, len);
        Ok(true)
    }
    /// Whether `[offset, offset + len)` may differ from the same range of
    /// the disk's base (an earlier capture of it; see
    /// [`crate::capture::DiskInput::base`]). Sources that know what changed
    /// since (a dirty bitmap) answer `false` for ranges that did not; the
    /// base's chunks are reused for them unread.
    fn may_have_changed(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        let _ = (offset, len);
        Ok(true)
    }
}

/// A raw disk in a regular file or block device; skips holes of sparse files
/// with `SEEK_DATA`.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    size: u64,
    seek_data: bool,
    /// Cached answer of the last SEEK_DATA: next data at or after `.0` is `.1`.
    next_data: Option<(u64, u64)>,
}

impl FileSource {
    /// Open `path` read-only.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::new(File::open(path)?)
    }

    /// Wrap an open file.
    pub fn new(mut file: File) -> io::Result<Self> {
        let meta = file.metadata()?;
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        }
        let size = if ft.is_block_device() {
            file.seek(SeekFrom::End(0))?
        } else {
            meta.len()
        };
        Ok(Self {
            file,
            size,
            seek_data: ft.is_file(),
            next_data: None,
        })
    }
}

impl DiskSource for FileSource {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn may_have_data(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        if !self.seek_data {
            return Ok(true);
        }
        if let Some((from, data)) = self.next_data
            && from <= offset
            && offset <= data
        {
            return Ok(data < offset + len);
        }
        let off =
            i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        match lseek(&self.file, off, Whence::SeekData) {
            Ok(data) => {
                // A successful lseek never returns a negative offset.
                let data = u64::try_from(data).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("SEEK_DATA returned the negative offset {data}"),
                    )
                })?;
                self.next_data = Some((offset, data));
                Ok(data < offset + len)
            }
            // No data at or after `offset`.
            Err(Errno::ENXIO) => {
                self.next_data = Some((offset, u64::MAX));
                Ok(false)
            }
            // Filesystem without SEEK_DATA: read everything.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => {
                self.seek_data = false;
                Ok(true)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Any `Read + Seek` as a source (reads everything; no hole information).
#[derive(Debug)]
pub struct ReadSeekSource<R> {
    inner: R,
    size: u64,
}

impl<R: Read + Seek + Send> ReadSeekSource<R> {
    /// Wrap `inner`; its size is where it ends.
    pub fn new(mut inner: R) -> io::Result<Self> {
        let size = inner.seek(SeekFrom::End(0))?;
        Ok(Self { inner, size })
    }
}

impl<R: Read + Seek + Send> DiskSource for ReadSeekSource<R> {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.seek(SeekFrom::Start(offset))?;
        self.inner.read_exact(buf)
    }
}

/// Where deploy writes a disk.
pub trait DiskTarget: Send {
    /// Capacity of the target in bytes.
    fn size_bytes(&mut self) -> io::Result<u64>;
    /// Write all of `buf` at `offset`.
    fn write_all_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Make `[offset, offset + len)` read as zeros.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Push written data to stable storage.
    fn sync(&mut self) -> io::Result<()>;
    /// A view that several threads may write through at once, when the
    /// target allows positional writes (files and block devices do).
    fn concurrent(&self) -> Option<&dyn ConcurrentTarget> {
        None
    }
}

/// Positional writes from several threads at once.
pub trait ConcurrentTarget: Sync {
    /// Write all of `buf` at `offset`.
    fn write_all_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
}

impl ConcurrentTarget for FileTarget {
    fn write_all_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
}

static ZERO_BUF: [u8; 64 * 1024] = [0; 64 * 1024];

fn write_zero_bytes(
    mut offset: u64,
    mut len: u64,
    write: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    while len > 0 {
        let n = usize::try_from(len).map_or(ZERO_BUF.len(), |len| len.min(ZERO_BUF.len()));
        write(offset, &ZERO_BUF[..n])?;
        offset += n as u64;
        len -= n as u64;
    }
    Ok(())
}

/// A raw disk in a regular file or block device.
#[derive(Debug)]
pub struct FileTarget {
    file: File,
    known_zero: bool,
    punch: bool,
}

impl FileTarget {
    /// Create (or truncate) the regular file `path` as a sparse file of
    /// `size_bytes`: holes need no writes.
    pub fn create(path: &Path, size_bytes: u64) -> io::Result<Self> {
        let file = File::create(path)?;
        file.set_len(size_bytes)?;
        Ok(Self {
            file,
            known_zero: true,
            punch: true,
        })
    }

    /// Open an existing target (a volume or block device) whose old contents
    /// must be overwritten, zeros included.
    pub fn open_existing(path: &Path) -> io::Result<Self> {
        let file = File::options().write(true).open(path)?;
        let punch = file.metadata()?.file_type().is_file();
        Ok(Self {
            file,
            known_zero: false,
            punch,
        })
    }

    /// Wrap an open file; `known_zero` promises it reads as zeros now.
    pub fn new(file: File, known_zero: bool) -> Self {
        let punch = file
            .metadata()
            .map(|m| m.file_type().is_file())
            .unwrap_or(false);
        Self {
            file,
            known_zero,
            punch,
        }
    }
}

impl DiskTarget for FileTarget {
    fn size_bytes(&mut self) -> io::Result<u64> {
        self.file.seek(SeekFrom::End(0))
    }

    fn write_all_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.known_zero || len == 0 {
            return Ok(());
        }
        if self.punch {
            let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "zero range of {len} bytes at {offset} is past the largest file offset"
                    ),
                ));
            };
            match fallocate(&self.file, flags, off, n) {
                Ok(()) => return Ok(()),
                Err(Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOSYS) => self.punch = false,
                Err(e) => return Err(e.into()),
            }
        }
        let file = &self.file;
        write_zero_bytes(offset, len, &mut |o, b| file.write_all_at(b, o))
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn concurrent(&self) -> Option<&dyn ConcurrentTarget> {
        Some(self)
    }
}

/// Any `Write + Seek` as a target. Zero ranges are written as zeros unless
/// the target is known to read as zeros already.
#[derive(Debug)]
pub struct WriteSeekTarget<W> {
    inner: W,
    known_zero: bool,
}

impl<W: Write + Seek + Send> WriteSeekTarget<W> {
    /// Wrap `inner`; `known_zero` promises it reads as zeros now.
    pub fn new(inner: W, known_zero: bool) -> Self {
        Self { inner, known_zero }
    }

    /// Unwrap.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write + Seek + Send> DiskTarget for WriteSeekTarget<W> {
    fn size_bytes(&mut self) -> io::Result<u64> {
        self.inner.seek(SeekFrom::End(0))
    }

    fn write_all_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.inner.seek(SeekFrom::Start(offset))?;
        self.inner.write_all(buf)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.known_zero {
            return Ok(());
        }
        let inner = &mut self.inner;
        write_zero_bytes(offset, len, &mut |o, b| {
            inner.seek(SeekFrom::Start(o))?;
            inner.write_all(b)
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Whether every byte of `buf` is zero (word at a time).
pub fn is_all_zero(buf: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid u128, and align_to only hands out
    // the correctly aligned middle part.
    let (head, mid, tail) = unsafe { buf.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && tail.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 4097];
        assert!(is_all_zero(&v));
        assert!(is_all_zero(&v[1..]));
        v[4096] = 1;
        assert!(!is_all_zero(&v));
        assert!(!is_all_zero(&v[3..]));
        v[4096] = 0;
        v[0] = 1;
        assert!(!is_all_zero(&v));
    }

    #[test]
    fn sparse_file_reports_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.raw");
        let f = File::create(&path).expect("create");
        f.set_len(64 << 20).expect("set_len");
        f.write_all_at(b"data", 10 << 20).expect("write");
        drop(f);
        let mut src = FileSource::open(&path).expect("open");
        assert_eq!(src.size_bytes(), 64 << 20);
        // Filesystems without hole support answer "maybe data" everywhere,
        // which is always correct; with it, the hole at the start is skipped.
        let data_at_10m = src.may_have_data(10 << 20, 1 << 20).expect("seek");
        assert!(data_at_10m);
        let start = src.may_have_data(0, 1 << 20).expect("seek");
        let end = src.may_have_data(32 << 20, 1 << 20).expect("seek");
        assert_eq!(start, end, "both ranges are holes");
        let mut buf = [0u8; 4];
        src.read_exact_at(10 << 20, &mut buf).expect("read");
        assert_eq!(&buf, b"data");
    }

    #[test]
    fn existing_target_zeroes_old_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vol");
        std::fs::write(&path, vec![0xAAu8; 300_000]).expect("write");
        let mut t = FileTarget::open_existing(&path).expect("open");
        t.write_zeroes(4096, 200_000).expect("zero");
        let got = std::fs::read(&path).expect("read");
        assert!(got[..4096].iter().all(|&b| b == 0xAA));
        assert!(got[4096..204_096].iter().all(|&b| b == 0));
        assert!(got[204_096..].iter().all(|&b| b == 0xAA));

        let mut w = WriteSeekTarget::new(io::Cursor::new(vec![1u8; 100]), false);
        w.write_zeroes(10, 20).expect("zero");
        let v = w.into_inner().into_inner();
        assert!(v[10..30].iter().all(|&b| b == 0) && v[30] == 1 && v[9] == 1);
    }
}
