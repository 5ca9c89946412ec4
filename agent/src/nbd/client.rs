//! A small NBD client: what a capture needs to read a point-in-time view
//! of a disk that QEMU exports during a pull-mode backup.
//!
//! Fixed newstyle handshake, `NBD_OPT_GO` for one named export, then
//! `NBD_CMD_READ` over a UNIX socket. When the server offers structured
//! replies and the `base:allocation` meta context (QEMU does), reads take
//! structured replies and `NBD_CMD_BLOCK_STATUS` tells which ranges are
//! holes or zeros, so a capture never reads them (as `SEEK_DATA` does for
//! files). Nothing else (no TLS, no writes): a full client crate would
//! bring an async runtime or C bindings for a handful of message types. Tested against `qemu-nbd` and QEMU's
//! own export (`agent/tests/nbd.rs`, `tests/tests/agent_e2e.rs`).

use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use imprint_store::source::DiskSource;

use super::wire::*;

/// Largest read sent as one request (servers accept 32 MiB; stay well
/// below).
const MAX_READ: usize = 4 << 20;

/// One export, opened for reading.
#[derive(Debug)]
pub struct NbdDisk {
    sock: UnixStream,
    size: u64,
    handle: u64,
    /// Structured replies were negotiated.
    structured: bool,
    /// The dirty bitmap's context id, when asked for.
    dirty: Option<u32>,
    /// The `base:allocation` context id, when the server has it.
    allocation: Option<u32>,
}

/// An export name as options carry it: its length, then its bytes.
fn named(name: &str) -> io::Result<Vec<u8>> {
    let len = u32::try_from(name.len()).map_err(|_| bad("export name too long"))?;
    let mut v = len.to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    Ok(v)
}

fn send_option(w: &mut impl Write, option: u32, data: &[u8]) -> io::Result<()> {
    let mut o = Vec::with_capacity(16 + data.len());
    o.extend_from_slice(&IHAVEOPT.to_be_bytes());
    o.extend_from_slice(&option.to_be_bytes());
    o.extend_from_slice(
        &u32::try_from(data.len())
            .map_err(|_| bad("option too long"))?
            .to_be_bytes(),
    );
    o.extend_from_slice(data);
    w.write_all(&o)
}

/// What the replies to one option said.
#[derive(Debug, Default)]
struct OptionReplies {
    /// The server refused the option: its error code and message.
    refused: Option<(u32, String)>,
    /// The meta contexts it announced (`NBD_REP_META_CONTEXT`): id, name.
    contexts: Vec<(u32, String)>,
    /// The export's size (`NBD_INFO_EXPORT`).
    size: Option<u64>,
}

/// Read the replies to one option, up to its ACK or error.
fn option_replies(r: &mut impl Read) -> io::Result<OptionReplies> {
    let mut out = OptionReplies::default();
    loop {
        if read_u64(r)? != OPT_REPLY_MAGIC {
            return Err(bad("bad NBD option reply"));
        }
        let _option = read_u32(r)?;
        let kind = read_u32(r)?;
        let len = read_u32(r)? as usize;
        if len > 64 << 10 {
            return Err(bad("NBD option reply too long"));
        }
        let mut data = vec![0; len];
        r.read_exact(&mut data)?;
        match kind {
            REP_ACK => return Ok(out),
            REP_META_CONTEXT if data.len() >= 4 => {
                out.contexts.push((
                    u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
                    String::from_utf8_lossy(&data[4..]).into_owned(),
                ));
            }
            REP_INFO if data.len() >= 12 && data[..2] == INFO_EXPORT.to_be_bytes() => {
                let mut b = [0; 8];
                b.copy_from_slice(&data[2..10]);
                out.size = Some(u64::from_be_bytes(b));
            }
            k if k & 0x8000_0000 != 0 => {
                out.refused = Some((k, String::from_utf8_lossy(&data).into_owned()));
                return Ok(out);
            }
            _ => {}
        }
    }
}

impl NbdDisk {
    /// Connect to the server on `socket` and open export `name`.
    pub fn open(socket: &Path, name: &str) -> io::Result<Self> {
        Self::open_with_bitmap(socket, name, None)
    }

    /// [`NbdDisk::open`], also asking for the dirty bitmap `bitmap` (QEMU's
    /// `qemu:dirty-bitmap:NAME` context: the blocks written since a
    /// checkpoint), which [`DiskSource::may_have_changed`] then answers
    /// from. A server without it is an error: the caller wanted to read
    /// only what changed.
    pub fn open_with_bitmap(socket: &Path, name: &str, bitmap: Option<&str>) -> io::Result<Self> {
        let mut sock = UnixStream::connect(socket)?;
        sock.set_read_timeout(Some(Duration::from_secs(60)))?;
        sock.set_write_timeout(Some(Duration::from_secs(60)))?;
        if read_u64(&mut sock)? != NBDMAGIC || read_u64(&mut sock)? != IHAVEOPT {
            return Err(bad("not a newstyle NBD server"));
        }
        let server_flags = read_u16(&mut sock)?;
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(bad("the NBD server does not speak fixed newstyle"));
        }
        let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE) | if no_zeroes { 2 } else { 0 };
        sock.write_all(&client_flags.to_be_bytes())?;
        // Structured replies, and with them the allocation map, if offered.
        send_option(&mut sock, OPT_STRUCTURED_REPLY, &[])?;
        let structured = option_replies(&mut sock)?.refused.is_none();
        let mut allocation = None;
        let mut dirty = None;
        let dirty_name = bitmap.map(|b| format!("{DIRTY_BITMAP}{b}"));
        if structured {
            let wanted: Vec<&str> = std::iter::once(ALLOCATION)
                .chain(dirty_name.as_deref())
                .collect();
            let mut q = named(name)?;
            let count = u32::try_from(wanted.len()).map_err(|_| bad("too many meta contexts"))?;
            q.extend_from_slice(&count.to_be_bytes());
            for c in &wanted {
                q.extend_from_slice(&named(c)?);
            }
            send_option(&mut sock, OPT_SET_META_CONTEXT, &q)?;
            for (id, c) in option_replies(&mut sock)?.contexts {
                if c == ALLOCATION {
                    allocation = Some(id);
                } else if Some(&c) == dirty_name.as_ref() {
                    dirty = Some(id);
                }
            }
        }
        if let (Some(b), None) = (bitmap, dirty) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("NBD export {name:?} has no dirty bitmap {b:?}"),
            ));
        }
        // NBD_OPT_GO: export name, no information requests.
        let mut go = named(name)?;
        go.extend_from_slice(&0u16.to_be_bytes());
        send_option(&mut sock, OPT_GO, &go)?;
        let replies = option_replies(&mut sock)?;
        if let Some((code, why)) = replies.refused {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("NBD export {name:?}: the server refused it (error {code:#x}: {why})"),
            ));
        }
        let size = replies.size;
        let size = size.ok_or_else(|| bad("the NBD server sent no export size"))?;
        Ok(Self {
            sock,
            size,
            handle: 0,
            structured,
            allocation,
            dirty,
        })
    }

    /// Whether the server answers block status (holes and zeros).
    pub fn knows_allocation(&self) -> bool {
        self.allocation.is_some()
    }

    /// One structured reply chunk for `handle`: (flags, type, payload).
    fn chunk(&mut self, handle: u64) -> io::Result<(u16, u16, Vec<u8>)> {
        if read_u32(&mut self.sock)? != STRUCTURED_REPLY_MAGIC {
            return Err(bad("bad NBD structured reply"));
        }
        let flags = read_u16(&mut self.sock)?;
        let kind = read_u16(&mut self.sock)?;
        if read_u64(&mut self.sock)? != handle {
            return Err(bad("NBD reply for another request"));
        }
        let len = read_u32(&mut self.sock)? as usize;
        if len > MAX_READ + 64 {
            return Err(bad("NBD reply chunk too long"));
        }
        let mut payload = vec![0; len];
        self.sock.read_exact(&mut payload)?;
        if kind & 0x8000 != 0 {
            let code = payload
                .get(..4)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            return Err(io::Error::other(format!("NBD server error {code}")));
        }
        Ok((flags, kind, payload))
    }

    fn request(&mut self, cmd: u16, offset: u64, len: u32) -> io::Result<u64> {
        self.handle += 1;
        let mut req = [0u8; 28];
        req[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req[6..8].copy_from_slice(&cmd.to_be_bytes());
        req[8..16].copy_from_slice(&self.handle.to_be_bytes());
        req[16..24].copy_from_slice(&offset.to_be_bytes());
        req[24..28].copy_from_slice(&len.to_be_bytes());
        self.sock.write_all(&req)?;
        Ok(self.handle)
    }

    fn read_part(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let len = u32::try_from(buf.len()).map_err(|_| bad("read too large"))?;
        let handle = self.request(CMD_READ, offset, len)?;
        if self.structured {
            loop {
                let (flags, kind, p) = self.chunk(handle)?;
                let at = |p: &[u8]| -> io::Result<usize> {
                    let o = p
                        .get(..8)
                        .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
                        .ok_or_else(|| bad("short NBD chunk"))?;
                    o.checked_sub(offset)
                        .and_then(|d| usize::try_from(d).ok())
                        .ok_or_else(|| bad("NBD chunk outside the request"))
                };
                match kind {
                    REPLY_TYPE_OFFSET_DATA => {
                        let start = at(&p)?;
                        let data = &p[8..];
                        buf.get_mut(start..start + data.len())
                            .ok_or_else(|| bad("NBD data outside the request"))?
                            .copy_from_slice(data);
                    }
                    REPLY_TYPE_OFFSET_HOLE => {
                        let start = at(&p)?;
                        let n = p
                            .get(8..12)
                            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                            .ok_or_else(|| bad("short NBD hole chunk"))?;
                        buf.get_mut(start..start + n)
                            .ok_or_else(|| bad("NBD hole outside the request"))?
                            .fill(0);
                    }
                    REPLY_TYPE_NONE => {}
                    other => return Err(bad(format!("unexpected NBD reply type {other}"))),
                }
                if flags & REPLY_FLAG_DONE != 0 {
                    return Ok(());
                }
            }
        }
        if read_u32(&mut self.sock)? != SIMPLE_REPLY_MAGIC {
            return Err(bad("bad NBD reply"));
        }
        let error = read_u32(&mut self.sock)?;
        if read_u64(&mut self.sock)? != handle {
            return Err(bad("NBD reply for another request"));
        }
        if error != 0 {
            return Err(io::Error::other(format!(
                "NBD read of {len} bytes at {offset} failed (error {error})"
            )));
        }
        self.sock.read_exact(buf)
    }
}

impl NbdDisk {
    /// Block status of `[offset, offset + len)` in meta context `context`:
    /// whether any extent's state satisfies `hit`. What the answer does not
    /// cover counts as a hit.
    fn any_extent(
        &mut self,
        context: u32,
        offset: u64,
        len: u64,
        hit: impl Fn(u32) -> bool,
    ) -> io::Result<bool> {
        let asked = u32::try_from(len.min(u64::from(u32::MAX))).unwrap_or(u32::MAX);
        let handle = self.request(CMD_BLOCK_STATUS, offset, asked)?;
        let mut covered_to = offset;
        let mut any = false;
        loop {
            let (flags, kind, p) = self.chunk(handle)?;
            if kind == REPLY_TYPE_BLOCK_STATUS && p.get(..4) == Some(&context.to_be_bytes()[..]) {
                for d in p[4..].chunks_exact(8) {
                    let n = u64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
                    let state = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
                    if covered_to < offset + len {
                        any |= hit(state);
                        covered_to += n;
                    }
                }
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        Ok(any || covered_to < offset + len)
    }
}

impl DiskSource for NbdDisk {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn may_have_data(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        match self.allocation {
            // Zero (or hole) across the whole range: no data.
            Some(context) => self.any_extent(context, offset, len, |state| state & STATE_ZERO == 0),
            None => Ok(true),
        }
    }

    fn may_have_changed(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        match self.dirty {
            Some(context) => {
                self.any_extent(context, offset, len, |state| state & STATE_DIRTY != 0)
            }
            None => Ok(true),
        }
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_READ);
            self.read_part(offset + done as u64, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

impl Drop for NbdDisk {
    fn drop(&mut self) {
        // A polite goodbye; the server copes without one.
        let _ = self.request(CMD_DISC, 0, 0);
    }
}
