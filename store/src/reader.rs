//! Random access to one stored disk: what an NBD export of an image reads
//! (a lazy deploy boots a guest on it before the disk is written).
//!
//! Reads are served chunk by chunk from the store, each chunk verified
//! against its digest before a byte of it is returned; zero chunks answer
//! zeros without I/O. Decoded chunks are kept in a small cache (a fixed
//! number of chunk buffers: memory per reader is bounded), so a guest
//! reading a chunk in small pieces fetches it once.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Condvar, Mutex, MutexGuard},
};

use crossbeam_channel::{Sender, bounded};

use crate::{ChunkDigest, Error, Manifest, Result, Store, blob::BlobDecoder, index::FixedIndex};

/// Chunks read ahead of a reader going forward (the fill reads the whole
/// disk in order; a booting guest mostly does too).
const READ_AHEAD: usize = 4;
/// Threads that read ahead.
const READ_AHEAD_THREADS: usize = 2;

/// What a range of the disk holds (from the index alone, no I/O).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes.
    pub len: u64,
    /// Zero chunks: reads answer zeros, nothing is stored.
    pub zero: bool,
}

/// A disk of a stored image, readable at any offset, from any thread.
#[derive(Debug)]
pub struct DiskReader {
    shared: Arc<Shared>,
    /// Chunk indexes to read ahead; the threads end when it is dropped.
    ahead: Option<Sender<usize>>,
}

#[derive(Debug)]
struct Shared {
    store: Store,
    index: FixedIndex,
    what: String,
    cache_chunks: usize,
    state: Mutex<State>,
    /// Signalled when a chunk being loaded is in the cache (or failed).
    loaded: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Most recently used last.
    cache: VecDeque<(usize, Arc<Vec<u8>>)>,
    /// Chunks some thread is loading now.
    loading: HashSet<usize>,
    /// Idle decoders (zstd contexts), reused.
    decoders: Vec<BlobDecoder>,
    /// Chunks fetched from the store (for tests and figures).
    fetched: u64,
    /// The last chunk a read touched (to notice forward reads).
    last: Option<usize>,
}

impl DiskReader {
    /// Disk `disk` of the image `manifest` describes, keeping at most
    /// `cache_chunks` decoded chunks (at least the read-ahead window).
    pub fn open(
        store: &Store,
        manifest: &Manifest,
        disk: usize,
        cache_chunks: usize,
    ) -> Result<Self> {
        let index = store.read_index(manifest, disk)?;
        let shared = Arc::new(Shared {
            store: store.clone(),
            index,
            what: format!("image {} disk {disk}", manifest.image_id),
            cache_chunks: cache_chunks.max(READ_AHEAD + 2),
            state: Mutex::new(State::default()),
            loaded: Condvar::new(),
        });
        let (tx, rx) = bounded::<usize>(4 * READ_AHEAD);
        for _ in 0..READ_AHEAD_THREADS {
            let (shared, rx) = (shared.clone(), rx.clone());
            std::thread::Builder::new()
                .name("read-ahead".into())
                .spawn(move || {
                    for i in rx {
                        // A failure shows when the chunk is really read.
                        let _ = shared.chunk(i);
                    }
                })
                .map_err(|e| Error::io("start a read-ahead thread", e))?;
        }
        Ok(Self {
            shared,
            ahead: Some(tx),
        })
    }

    /// Guest-visible size.
    pub fn size_bytes(&self) -> u64 {
        self.shared.index.size_bytes()
    }

    /// Chunk size of the disk.
    pub fn chunk_size(&self) -> u32 {
        self.shared.index.chunk_size()
    }

    /// Chunks fetched from the store so far.
    pub fn chunks_fetched(&self) -> u64 {
        self.shared.lock().fetched
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size_bytes() => Ok(()),
            _ => Err(Error::invalid(format!(
                "{}: range {offset}+{len} is beyond its {} bytes",
                self.shared.what,
                self.size_bytes()
            ))),
        }
    }

    /// Fill `buf` with the bytes at `offset`. A chunk that fails its check
    /// is an error naming it (`Corrupt`), never wrong bytes.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let index = &self.shared.index;
        let chunk = u64::from(self.chunk_size());
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = usize::try_from(pos / chunk)
                .map_err(|_| Error::invalid(format!("{}: offset {pos}", self.shared.what)))?;
            let within = usize::try_from(pos % chunk).unwrap_or(0);
            let (_, chunk_len) = index.chunk_range(i);
            let n = (chunk_len - within).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            if index.digests()[i].is_zero_chunk() {
                out.fill(0);
            } else {
                self.read_ahead(i);
                let data = self.shared.chunk(i)?;
                out.copy_from_slice(&data[within..within + n]);
            }
            done += n;
        }
        Ok(())
    }

    /// A read of chunk `i` right after chunk `i - 1` (or `i`): queue the
    /// next data chunks.
    fn read_ahead(&self, i: usize) {
        let forward = {
            let mut st = self.shared.lock();
            let forward = st.last.is_some_and(|l| l == i || l + 1 == i);
            if st.last != Some(i) {
                st.last = Some(i);
            } else {
                return;
            }
            forward
        };
        let Some(tx) = &self.ahead else { return };
        if !forward {
            return;
        }
        let digests = self.shared.index.digests();
        for j in (i + 1..digests.len())
            .filter(|j| !digests[*j].is_zero_chunk())
            .take(READ_AHEAD)
        {
            // Full queue: the threads are busy; skip rather than wait.
            let _ = tx.try_send(j);
        }
    }

    /// What `[offset, offset + len)` holds, as consecutive extents (runs
    /// of zero and of data chunks), from the index alone.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let index = &self.shared.index;
        let chunk = u64::from(self.chunk_size());
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let i = usize::try_from(pos / chunk)
                .map_err(|_| Error::invalid(format!("{}: offset {pos}", self.shared.what)))?;
            let (start, chunk_len) = index.chunk_range(i);
            let n = (start + chunk_len as u64).min(end) - pos;
            let zero = index.digests()[i].is_zero_chunk();
            match out.last_mut() {
                Some(last) if last.zero == zero => last.len += n,
                _ => out.push(Extent { len: n, zero }),
            }
            pos += n;
        }
        Ok(out)
    }
}

impl Drop for DiskReader {
    fn drop(&mut self) {
        // The read-ahead threads end with their channel.
        self.ahead.take();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Chunk `i`, from the cache, from the thread already loading it, or
    /// from the store (fetched, decoded and checked without the lock).
    fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        let mut st = self.lock();
        loop {
            if let Some(pos) = st.cache.iter().position(|(c, _)| *c == i) {
                let hit = st.cache.remove(pos).map(|(_, d)| d).unwrap_or_default();
                st.cache.push_back((i, hit.clone()));
                return Ok(hit);
            }
            if !st.loading.contains(&i) {
                break;
            }
            st = self.loaded.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.loading.insert(i);
        let decoder = st.decoders.pop();
        drop(st);
        let loaded = self.load(i, decoder);
        let mut st = self.lock();
        st.loading.remove(&i);
        let r = match loaded {
            Ok((data, decoder)) => {
                st.decoders.push(decoder);
                st.fetched += 1;
                if st.cache.len() >= self.cache_chunks {
                    st.cache.pop_front();
                }
                st.cache.push_back((i, data.clone()));
                Ok(data)
            }
            Err(e) => Err(e),
        };
        drop(st);
        self.loaded.notify_all();
        r
    }

    fn load(&self, i: usize, decoder: Option<BlobDecoder>) -> Result<(Arc<Vec<u8>>, BlobDecoder)> {
        let digest: ChunkDigest = self.index.digests()[i];
        let mut decoder = match decoder {
            Some(d) => d,
            None => BlobDecoder::new()?,
        };
        let mut blob = Vec::new();
        let mut out = Vec::new();
        self.store
            .backend()
            .read_chunk(&digest, &mut blob)
            .and_then(|()| decoder.decode_into(&blob, &digest, &mut out))
            .map_err(|e| e.context(format!("{} chunk {i}", self.what)))?;
        Ok((Arc::new(out), decoder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        StoreConfig,
        capture::{CaptureOptions, DiskInput, capture},
        source::FileSource,
    };

    fn stored(data: &[u8]) -> (tempfile::TempDir, Store, Manifest) {
        let dir = tempfile::tempdir().expect("tmp");
        let config = StoreConfig {
            chunk_size: 64 * 1024,
            ..StoreConfig::default()
        };
        let store =
            Store::open_or_create_dir(&dir.path().join("store"), false, config).expect("store");
        let disk = dir.path().join("disk.raw");
        std::fs::write(&disk, data).expect("disk");
        let src = FileSource::open(&disk).expect("source");
        let disks = vec![DiskInput {
            name: "vda".into(),
            source: Box::new(src),
            base: None,
        }];
        let m = capture(&store, "t", disks, &CaptureOptions::default(), &mut |_| {})
            .expect("capture")
            .manifest;
        (dir, store, m)
    }

    #[test]
    fn reads_any_range_and_zeros_cost_nothing() {
        let chunk = 64 * 1024;
        let mut data = vec![0u8; 5 * chunk + 1000];
        for (i, b) in data[chunk..3 * chunk].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        data[5 * chunk + 10] = 7;
        let (_dir, store, m) = stored(&data);
        let r = DiskReader::open(&store, &m, 0, 2).expect("open");
        assert_eq!(r.size_bytes(), data.len() as u64);
        for (off, len) in [
            (0, 10),
            (chunk - 5, 10),
            (chunk + 3, 2 * chunk),
            (5 * chunk, 1000),
        ] {
            let mut buf = vec![0xAA; len];
            r.read_at(off as u64, &mut buf).expect("read");
            assert_eq!(buf, data[off..off + len], "{off}+{len}");
        }
        // A fresh reader (nothing read ahead) of a zero chunk fetches
        // nothing.
        let fresh = DiskReader::open(&store, &m, 0, 2).expect("open");
        let mut zeros = vec![1u8; chunk];
        fresh
            .read_at(3 * chunk as u64, &mut zeros)
            .expect("zero chunk");
        assert_eq!(fresh.chunks_fetched(), 0, "a zero chunk is not fetched");
        assert!(zeros.iter().all(|b| *b == 0));
        assert!(r.read_at(data.len() as u64 - 1, &mut [0; 2]).is_err());
        let e = r.extents(0, data.len() as u64).expect("extents");
        let c = chunk as u64;
        assert_eq!(
            e,
            vec![
                Extent { len: c, zero: true },
                Extent {
                    len: 2 * c,
                    zero: false
                },
                Extent {
                    len: 2 * c,
                    zero: true
                },
                Extent {
                    len: 1000,
                    zero: false
                },
            ]
        );
    }

    #[test]
    fn a_corrupt_chunk_is_named_not_served() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let (dir, store, m) = stored(&data);
        // Flip a byte in every stored chunk file.
        for entry in walk(&dir.path().join("store").join("chunks")) {
            let mut b = std::fs::read(&entry).expect("read chunk");
            let last = b.len() - 1;
            b[last] ^= 0xFF;
            std::fs::write(&entry, b).expect("write chunk");
        }
        let r = DiskReader::open(&store, &m, 0, 4).expect("open");
        let e = r.read_at(0, &mut [0u8; 16]).expect_err("corrupt");
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains("chunk 0"), "{e}");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).expect("dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
