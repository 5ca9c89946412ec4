//! A small NBD client: what a capture needs to read a point-in-time view
//! of a disk that QEMU exports during a pull-mode backup.
//!
//! Fixed newstyle handshake, `NBD_OPT_GO` for one named export, then
//! `NBD_CMD_READ` with simple replies, over a UNIX socket. Nothing else
//! (no TLS, no structured replies, no writes): QEMU's server supports this
//! baseline, and a full client crate would bring an async runtime or C
//! bindings for three message types. Tested against `qemu-nbd` and QEMU's
//! own export (`agent/tests/nbd.rs`, `tests/tests/backup_capture_e2e.rs`).

use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use imprint_store::source::DiskSource;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;
const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;
/// Largest read sent as one request (servers accept 32 MiB; stay well
/// below).
const MAX_READ: usize = 4 << 20;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// One export, opened for reading.
#[derive(Debug)]
pub struct NbdDisk {
    sock: UnixStream,
    size: u64,
    handle: u64,
}

fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}
fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

impl NbdDisk {
    /// Connect to the server on `socket` and open export `name`.
    pub fn open(socket: &Path, name: &str) -> io::Result<Self> {
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
        // NBD_OPT_GO: export name, no information requests.
        let name_len = u32::try_from(name.len()).map_err(|_| bad("export name too long"))?;
        let mut opt = Vec::with_capacity(name.len() + 26);
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&(name_len + 6).to_be_bytes());
        opt.extend_from_slice(&name_len.to_be_bytes());
        opt.extend_from_slice(name.as_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        sock.write_all(&opt)?;
        let mut size = None;
        loop {
            if read_u64(&mut sock)? != OPT_REPLY_MAGIC {
                return Err(bad("bad NBD option reply"));
            }
            let _option = read_u32(&mut sock)?;
            let kind = read_u32(&mut sock)?;
            let len = read_u32(&mut sock)? as usize;
            if len > 64 << 10 {
                return Err(bad("NBD option reply too long"));
            }
            let mut data = vec![0; len];
            sock.read_exact(&mut data)?;
            match kind {
                REP_ACK => break,
                REP_INFO if data.len() >= 12 && data[..2] == INFO_EXPORT.to_be_bytes() => {
                    let mut b = [0; 8];
                    b.copy_from_slice(&data[2..10]);
                    size = Some(u64::from_be_bytes(b));
                }
                REP_INFO => {}
                k if k & 0x8000_0000 != 0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "NBD export {name:?}: the server refused it (error {k:#x}: {})",
                            String::from_utf8_lossy(&data)
                        ),
                    ));
                }
                _ => {}
            }
        }
        let size = size.ok_or_else(|| bad("the NBD server sent no export size"))?;
        Ok(Self {
            sock,
            size,
            handle: 0,
        })
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

impl DiskSource for NbdDisk {
    fn size_bytes(&self) -> u64 {
        self.size
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
