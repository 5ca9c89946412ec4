//! A read-only NBD server for one export, on a UNIX socket: how a lazy
//! deploy's guest reads a stored image before its disk is written.
//!
//! Fixed newstyle handshake with `NBD_OPT_EXPORT_NAME`, `INFO`/`GO`,
//! `LIST`, structured replies and the `base:allocation` meta context, so
//! the reader (QEMU's block layer) learns which ranges are zero chunks and
//! skips them; `NBD_CMD_READ`, `BLOCK_STATUS`, `FLUSH`, `CACHE`, `DISC`.
//! Writes are refused (`EPERM`). A read the source cannot serve (a chunk
//! missing or failing its check) answers `EIO`, never other bytes, and is
//! remembered ([`Export::failure`]) so the deploy can name the chunk.
//!
//! [`serve_session`] speaks the protocol on any byte stream: the socket
//! server runs it per connection (one thread each), the tests and the fuzz
//! target (`fuzz/fuzz_targets/nbd_server.rs`) on memory.

use std::{
    io::{self, Read, Write},
    os::unix::{
        fs::PermissionsExt,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use imprint_store::reader::{DiskReader, Extent};

use super::wire::*;

/// Largest option a client may send (names and queries only).
const MAX_OPTION: u32 = 64 << 10;
/// Largest read or block-status request served (the protocol's usual
/// maximum block size).
const MAX_REQUEST: u32 = 32 << 20;
/// The one meta context: its id.
const ALLOCATION_ID: u32 = 1;

/// What an export serves: a disk, readable at any offset.
pub trait BlockSource: Send + Sync {
    /// Size in bytes.
    fn size_bytes(&self) -> u64;
    /// Fill `buf` from `offset` (within the size); an error is said in
    /// words for the log and the operation.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String>;
    /// What `[offset, offset + len)` holds: data or zero runs.
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, String>;
}

impl BlockSource for DiskReader {
    fn size_bytes(&self) -> u64 {
        DiskReader::size_bytes(self)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        DiskReader::read_at(self, offset, buf).map_err(|e| e.to_string())
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, String> {
        DiskReader::extents(self, offset, len).map_err(|e| e.to_string())
    }
}

/// What one session shares with the export: the source, and where a
/// failed read is recorded.
#[allow(missing_debug_implementations)]
pub struct Served<'a> {
    /// The export's name (an empty name asks for it too).
    pub name: &'a str,
    /// The disk.
    pub source: &'a dyn BlockSource,
    /// The first read that failed, said in words.
    pub failure: &'a Mutex<Option<String>>,
}

/// The state a session negotiated.
#[derive(Debug, Default)]
struct Session {
    structured: bool,
    allocation: bool,
}

/// Speak NBD on `io` until the client disconnects (`Ok`) or breaks the
/// protocol (`Err`).
pub fn serve_session<S: Read + Write>(io: &mut S, served: &Served<'_>) -> io::Result<()> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    io.write_all(&greeting)?;
    let client_flags = read_u32(io)?;
    let mut session = Session::default();
    if negotiate(
        io,
        served,
        &mut session,
        client_flags & FLAG_C_NO_ZEROES != 0,
    )? {
        transmit(io, served, &session)?;
    }
    Ok(())
}

fn transmission_flags() -> u16 {
    TRANSMIT_HAS_FLAGS | TRANSMIT_READ_ONLY | TRANSMIT_SEND_DF | TRANSMIT_CAN_MULTI_CONN
}

fn option_reply(w: &mut impl Write, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut o = Vec::with_capacity(20 + data.len());
    o.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    o.extend_from_slice(&option.to_be_bytes());
    o.extend_from_slice(&kind.to_be_bytes());
    let len = u32::try_from(data.len()).map_err(|_| bad("option reply too long"))?;
    o.extend_from_slice(&len.to_be_bytes());
    o.extend_from_slice(data);
    w.write_all(&o)
}

/// A length-prefixed string at the front of `data` (u32 length).
fn take_string<'d>(data: &mut &'d [u8]) -> Option<&'d [u8]> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    if rest.len() < len {
        return None;
    }
    let (s, rest) = rest.split_at(len);
    *data = rest;
    Some(s)
}

/// Option haggling; `true` when transmission starts.
fn negotiate<S: Read + Write>(
    io: &mut S,
    served: &Served<'_>,
    session: &mut Session,
    no_zeroes: bool,
) -> io::Result<bool> {
    loop {
        if read_u64(io)? != IHAVEOPT {
            return Err(bad("expected an NBD option"));
        }
        let option = read_u32(io)?;
        let len = read_u32(io)?;
        if len > MAX_OPTION {
            return Err(bad(format!("NBD option of {len} bytes")));
        }
        let mut data = vec![0; len as usize];
        io.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                if !names_us(served, &data) {
                    return Err(bad("unknown export"));
                }
                let mut r = served.source.size_bytes().to_be_bytes().to_vec();
                r.extend_from_slice(&transmission_flags().to_be_bytes());
                if !no_zeroes {
                    r.extend_from_slice(&[0; 124]);
                }
                io.write_all(&r)?;
                return Ok(true);
            }
            OPT_ABORT => {
                option_reply(io, option, REP_ACK, &[])?;
                return Ok(false);
            }
            OPT_LIST => {
                let name = served.name.as_bytes();
                let mut r = u32::try_from(name.len())
                    .map_err(|_| bad("export name too long"))?
                    .to_be_bytes()
                    .to_vec();
                r.extend_from_slice(name);
                option_reply(io, option, REP_SERVER, &r)?;
                option_reply(io, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                if info(io, served, option, &data)? && option == OPT_GO {
                    return Ok(true);
                }
            }
            OPT_STRUCTURED_REPLY if data.is_empty() => {
                session.structured = true;
                option_reply(io, option, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                meta_context(io, served, session, option, &data)?;
            }
            OPT_STRUCTURED_REPLY => option_reply(io, option, REP_ERR_INVALID, &[])?,
            _ => option_reply(io, option, REP_ERR_UNSUP, &[])?,
        }
    }
}

fn names_us(served: &Served<'_>, name: &[u8]) -> bool {
    name.is_empty() || name == served.name.as_bytes()
}

/// `NBD_OPT_INFO`/`GO`: the export's size, flags and block sizes; `true`
/// when the export was found.
fn info(io: &mut impl Write, served: &Served<'_>, option: u32, data: &[u8]) -> io::Result<bool> {
    let mut rest = data;
    let Some(name) = take_string(&mut rest) else {
        option_reply(io, option, REP_ERR_INVALID, &[])?;
        return Ok(false);
    };
    let Some((n, requests)) = rest.split_first_chunk::<2>() else {
        option_reply(io, option, REP_ERR_INVALID, &[])?;
        return Ok(false);
    };
    if requests.len() != 2 * usize::from(u16::from_be_bytes(*n)) {
        option_reply(io, option, REP_ERR_INVALID, &[])?;
        return Ok(false);
    }
    if !names_us(served, name) {
        option_reply(io, option, REP_ERR_UNKNOWN, &[])?;
        return Ok(false);
    }
    let mut export = INFO_EXPORT.to_be_bytes().to_vec();
    export.extend_from_slice(&served.source.size_bytes().to_be_bytes());
    export.extend_from_slice(&transmission_flags().to_be_bytes());
    option_reply(io, option, REP_INFO, &export)?;
    let mut sizes = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [1u32, 4096, MAX_REQUEST] {
        sizes.extend_from_slice(&v.to_be_bytes());
    }
    option_reply(io, option, REP_INFO, &sizes)?;
    option_reply(io, option, REP_ACK, &[])?;
    Ok(true)
}

/// `NBD_OPT_LIST_META_CONTEXT`/`SET_META_CONTEXT`: only `base:allocation`.
fn meta_context(
    io: &mut impl Write,
    served: &Served<'_>,
    session: &mut Session,
    option: u32,
    data: &[u8],
) -> io::Result<()> {
    let set = option == OPT_SET_META_CONTEXT;
    if set && !session.structured {
        return option_reply(io, option, REP_ERR_INVALID, &[]);
    }
    let mut rest = data;
    let Some(name) = take_string(&mut rest) else {
        return option_reply(io, option, REP_ERR_INVALID, &[]);
    };
    let Some((n, queries)) = rest.split_first_chunk::<4>() else {
        return option_reply(io, option, REP_ERR_INVALID, &[]);
    };
    let n = u32::from_be_bytes(*n);
    let mut queries = queries;
    let mut wanted = !set && n == 0;
    for _ in 0..n {
        let Some(q) = take_string(&mut queries) else {
            return option_reply(io, option, REP_ERR_INVALID, &[]);
        };
        wanted |= q == ALLOCATION.as_bytes() || (!set && q == b"base:");
    }
    if !queries.is_empty() {
        return option_reply(io, option, REP_ERR_INVALID, &[]);
    }
    if !names_us(served, name) {
        return option_reply(io, option, REP_ERR_UNKNOWN, &[]);
    }
    if set {
        session.allocation = wanted;
    }
    if wanted {
        let mut r = ALLOCATION_ID.to_be_bytes().to_vec();
        r.extend_from_slice(ALLOCATION.as_bytes());
        option_reply(io, option, REP_META_CONTEXT, &r)?;
    }
    option_reply(io, option, REP_ACK, &[])
}

/// One request of the transmission phase.
#[derive(Debug, Clone, Copy)]
struct Request {
    flags: u16,
    kind: u16,
    handle: u64,
    offset: u64,
    len: u32,
}

fn read_request(r: &mut impl Read) -> io::Result<Request> {
    if read_u32(r)? != REQUEST_MAGIC {
        return Err(bad("bad NBD request magic"));
    }
    Ok(Request {
        flags: read_u16(r)?,
        kind: read_u16(r)?,
        handle: read_u64(r)?,
        offset: read_u64(r)?,
        len: read_u32(r)?,
    })
}

/// Answers of the transmission phase, simple or structured as negotiated.
struct Replier<'w, W: Write> {
    w: &'w mut W,
    structured: bool,
}

impl<W: Write> Replier<'_, W> {
    fn chunk(&mut self, kind: u16, handle: u64, payload: &[&[u8]]) -> io::Result<()> {
        let len: usize = payload.iter().map(|p| p.len()).sum();
        let mut o = Vec::with_capacity(20 + len);
        o.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        o.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        o.extend_from_slice(&kind.to_be_bytes());
        o.extend_from_slice(&handle.to_be_bytes());
        let len = u32::try_from(len).map_err(|_| bad("reply too long"))?;
        o.extend_from_slice(&len.to_be_bytes());
        for p in payload {
            o.extend_from_slice(p);
        }
        self.w.write_all(&o)
    }

    fn simple(&mut self, error: u32, handle: u64, data: &[u8]) -> io::Result<()> {
        let mut o = Vec::with_capacity(16 + data.len());
        o.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        o.extend_from_slice(&error.to_be_bytes());
        o.extend_from_slice(&handle.to_be_bytes());
        o.extend_from_slice(data);
        self.w.write_all(&o)
    }

    fn ok(&mut self, handle: u64) -> io::Result<()> {
        if self.structured {
            self.chunk(REPLY_TYPE_NONE, handle, &[])
        } else {
            self.simple(0, handle, &[])
        }
    }

    fn error(&mut self, handle: u64, errno: u32, msg: &str) -> io::Result<()> {
        if !self.structured {
            return self.simple(errno, handle, &[]);
        }
        let msg = &msg.as_bytes()[..msg.len().min(4096)];
        let msg_len = u16::try_from(msg.len()).unwrap_or(0);
        let head = [errno.to_be_bytes().as_slice(), &msg_len.to_be_bytes()].concat();
        self.chunk(REPLY_TYPE_ERROR, handle, &[&head, msg])
    }

    fn data(&mut self, handle: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.structured {
            self.chunk(
                REPLY_TYPE_OFFSET_DATA,
                handle,
                &[&offset.to_be_bytes(), data],
            )
        } else {
            self.simple(0, handle, data)
        }
    }
}

/// Serve requests until `NBD_CMD_DISC` or the end of the stream.
fn transmit<S: Read + Write>(io: &mut S, served: &Served<'_>, session: &Session) -> io::Result<()> {
    let size = served.source.size_bytes();
    loop {
        let req = match read_request(io) {
            Ok(r) => r,
            // The client went away without NBD_CMD_DISC (QEMU killed).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if req.kind == CMD_WRITE {
            // Its payload follows; read it to stay in step, then refuse.
            if req.len > MAX_REQUEST {
                return Err(bad("NBD write beyond the maximum request"));
            }
            io::copy(&mut (&mut *io).take(u64::from(req.len)), &mut io::sink())?;
        }
        let mut reply = Replier {
            w: &mut *io,
            structured: session.structured,
        };
        let in_range = req
            .offset
            .checked_add(u64::from(req.len))
            .is_some_and(|end| end <= size);
        match req.kind {
            CMD_DISC => return Ok(()),
            CMD_READ if !in_range => reply.error(req.handle, EINVAL, "beyond the end")?,
            CMD_READ if req.len > MAX_REQUEST => reply.error(req.handle, EOVERFLOW, "too long")?,
            CMD_READ => read(&mut reply, served, req)?,
            CMD_BLOCK_STATUS if !session.allocation || !in_range => {
                reply.error(req.handle, EINVAL, "no such range or context")?;
            }
            CMD_BLOCK_STATUS => block_status(&mut reply, served, req)?,
            CMD_FLUSH | CMD_CACHE => reply.ok(req.handle)?,
            CMD_WRITE => reply.error(req.handle, EPERM, "read-only export")?,
            _ => reply.error(req.handle, ENOTSUP, "not supported")?,
        }
    }
}

fn read<W: Write>(reply: &mut Replier<'_, W>, served: &Served<'_>, req: Request) -> io::Result<()> {
    let mut buf = vec![0; req.len as usize];
    match served.source.read_at(req.offset, &mut buf) {
        Ok(()) => reply.data(req.handle, req.offset, &buf),
        Err(e) => {
            tracing::error!(offset = req.offset, len = req.len, error = %e, "NBD read failed");
            served
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e.clone());
            reply.error(req.handle, EIO, &e)
        }
    }
}

fn block_status<W: Write>(
    reply: &mut Replier<'_, W>,
    served: &Served<'_>,
    req: Request,
) -> io::Result<()> {
    let extents = match served.source.extents(req.offset, u64::from(req.len)) {
        Ok(e) => e,
        Err(e) => return reply.error(req.handle, EIO, &e),
    };
    let mut descriptors = Vec::new();
    for e in extents {
        let flags = if e.zero { STATE_HOLE | STATE_ZERO } else { 0 };
        // The request's length is a u32: so is every extent within it.
        let len = u32::try_from(e.len).unwrap_or(u32::MAX);
        descriptors.extend_from_slice(&len.to_be_bytes());
        descriptors.extend_from_slice(&flags.to_be_bytes());
        if req.flags & CMD_FLAG_REQ_ONE != 0 {
            break;
        }
    }
    reply.chunk(
        REPLY_TYPE_BLOCK_STATUS,
        req.handle,
        &[&ALLOCATION_ID.to_be_bytes(), &descriptors],
    )
}

/// An export served on a UNIX socket until stopped (or dropped).
pub struct Export {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Export {
    /// Serve `source` as export `name` on a new socket at `path` (a stale
    /// socket there is replaced), mode 0660 with group `gid` when given
    /// (QEMU must be able to connect: libvirt does not relabel NBD
    /// sockets).
    pub fn start(
        path: &Path,
        name: &str,
        source: Arc<dyn BlockSource>,
        gid: Option<u32>,
    ) -> io::Result<Self> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                std::fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(path, None, Some(gid))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (name, stop2, failure2, conns2) = (
            name.to_string(),
            stop.clone(),
            failure.clone(),
            conns.clone(),
        );
        let accept = std::thread::Builder::new()
            .name("nbd-export".into())
            .spawn(move || accept_loop(&listener, &name, &source, &stop2, &failure2, &conns2))?;
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            failure,
            conns,
            accept: Some(accept),
        })
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The first read that failed, if any (a missing or damaged chunk).
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stop serving: no new connections, open ones cut, socket removed.
    pub fn stop(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: &UnixListener,
    name: &str,
    source: &Arc<dyn BlockSource>,
    stop: &AtomicBool,
    failure: &Arc<Mutex<Option<String>>>,
    conns: &Mutex<Vec<UnixStream>>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut conn) = conn else { continue };
        if let Ok(c) = conn.try_clone() {
            conns.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
        let (name, source, failure) = (name.to_string(), source.clone(), failure.clone());
        let spawned = std::thread::Builder::new()
            .name("nbd-conn".into())
            .spawn(move || {
                let served = Served {
                    name: &name,
                    source: source.as_ref(),
                    failure: &failure,
                };
                if let Err(e) = serve_session(&mut conn, &served) {
                    tracing::debug!(error = %e, "NBD session ended");
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot serve an NBD connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use imprint_store::source::DiskSource;

    use super::*;

    /// A disk in memory: data except where `zero` runs say.
    struct Mem {
        data: Vec<u8>,
        chunk: usize,
    }

    impl BlockSource for Mem {
        fn size_bytes(&self) -> u64 {
            self.data.len() as u64
        }

        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
            let o = usize::try_from(offset).map_err(|e| e.to_string())?;
            if o == 0 && buf.len() == 13 {
                return Err("chunk 0 failed its check".into());
            }
            buf.copy_from_slice(&self.data[o..o + buf.len()]);
            Ok(())
        }

        fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, String> {
            let mut out: Vec<Extent> = Vec::new();
            let (mut pos, end) = (offset, offset + len);
            while pos < end {
                let c = usize::try_from(pos).map_err(|e| e.to_string())? / self.chunk;
                let stop = ((c + 1) * self.chunk) as u64;
                let n = stop.min(end) - pos;
                let zero = self.data[c * self.chunk..(c + 1) * self.chunk]
                    .iter()
                    .all(|b| *b == 0);
                match out.last_mut() {
                    Some(l) if l.zero == zero => l.len += n,
                    _ => out.push(Extent { len: n, zero }),
                }
                pos += n;
            }
            Ok(out)
        }
    }

    /// A client's bytes in, the server's out.
    pub(crate) struct Duplex {
        pub input: io::Cursor<Vec<u8>>,
        pub output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn request(kind: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut r = REQUEST_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&handle.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r
    }

    #[test]
    fn writes_are_refused_and_the_session_stays_in_step() {
        let source = Mem {
            data: vec![7; 1 << 20],
            chunk: 1 << 20,
        };
        let mut script = FLAG_C_NO_ZEROES.to_be_bytes().to_vec();
        script.extend_from_slice(&IHAVEOPT.to_be_bytes());
        script.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        script.extend_from_slice(&4u32.to_be_bytes());
        script.extend_from_slice(b"disk");
        script.extend(request(CMD_WRITE, 1, 0, 4));
        script.extend_from_slice(b"abcd");
        script.extend(request(CMD_READ, 2, 10, 3));
        script.extend(request(CMD_DISC, 3, 0, 0));
        let mut io = Duplex {
            input: io::Cursor::new(script),
            output: Vec::new(),
        };
        let failure = Mutex::new(None);
        let served = Served {
            name: "disk",
            source: &source,
            failure: &failure,
        };
        serve_session(&mut io, &served).expect("session");
        // Greeting (18), size and flags (10), then two simple replies.
        let replies = &io.output[28..];
        let simple = |error: u32, handle: u64| {
            let mut r = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
            r.extend_from_slice(&error.to_be_bytes());
            r.extend_from_slice(&handle.to_be_bytes());
            r
        };
        let mut want = simple(EPERM, 1);
        want.extend(simple(0, 2));
        want.extend_from_slice(&[7, 7, 7]);
        assert_eq!(replies, want.as_slice());
    }

    #[test]
    fn our_client_reads_what_our_server_serves() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut data = vec![0u8; 4 << 20];
        for (i, b) in data[1 << 20..2 << 20].iter_mut().enumerate() {
            *b = (i % 241) as u8 + 1;
        }
        let source = Arc::new(Mem {
            data: data.clone(),
            chunk: 1 << 20,
        });
        let sock = dir.path().join("e.sock");
        let mut export = Export::start(&sock, "disk", source, None).expect("serve");
        let mut disk = super::super::NbdDisk::open(&sock, "disk").expect("connect");
        assert!(disk.knows_allocation());
        let mut buf = vec![0; 3 << 20];
        disk.read_exact_at(1 << 19, &mut buf).expect("read");
        assert!(!disk.may_have_data(0, 1 << 20).expect("status"), "zeros");
        assert!(disk.may_have_data(1 << 20, 1).expect("status"), "data");
        assert_eq!(buf, data[1 << 19..(1 << 19) + (3 << 20)]);
        let mut bad = vec![0; 13];
        assert!(disk.read_exact_at(0, &mut bad).is_err());
        assert_eq!(
            export.failure().as_deref(),
            Some("chunk 0 failed its check")
        );
        drop(disk);
        export.stop();
        assert!(!sock.exists(), "the socket goes with the export");
    }
}
