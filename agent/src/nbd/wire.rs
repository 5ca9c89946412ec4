//! The NBD protocol's numbers and integer reads, shared by the client
//! and the server (the protocol: `doc/proto.md` of the NBD project).

use std::io::{self, Read};

pub(super) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub(super) const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub(super) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(super) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(super) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub(super) const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub(super) const FLAG_NO_ZEROES: u16 = 2;
pub(super) const OPT_GO: u32 = 7;
pub(super) const OPT_STRUCTURED_REPLY: u32 = 8;
pub(super) const OPT_SET_META_CONTEXT: u32 = 10;
pub(super) const REP_ACK: u32 = 1;
pub(super) const REP_INFO: u32 = 3;
pub(super) const REP_META_CONTEXT: u32 = 4;
pub(super) const INFO_EXPORT: u16 = 0;
pub(super) const CMD_READ: u16 = 0;
pub(super) const CMD_DISC: u16 = 2;
pub(super) const CMD_BLOCK_STATUS: u16 = 7;
pub(super) const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub(super) const REPLY_FLAG_DONE: u16 = 1;
pub(super) const REPLY_TYPE_NONE: u16 = 0;
pub(super) const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub(super) const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub(super) const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub(super) const STATE_ZERO: u32 = 2;
pub(super) const ALLOCATION: &str = "base:allocation";
/// QEMU's dirty bitmaps: `qemu:dirty-bitmap:NAME`, state bit 0 = dirty.
pub(super) const DIRTY_BITMAP: &str = "qemu:dirty-bitmap:";
pub(super) const STATE_DIRTY: u32 = 1;

/// A protocol violation by the peer.
pub(super) fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

pub(super) fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

pub(super) fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

pub(super) fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

// What only the server side uses.
pub(super) const OPT_EXPORT_NAME: u32 = 1;
pub(super) const OPT_ABORT: u32 = 2;
pub(super) const OPT_LIST: u32 = 3;
pub(super) const OPT_INFO: u32 = 6;
pub(super) const OPT_LIST_META_CONTEXT: u32 = 9;
pub(super) const REP_SERVER: u32 = 2;
pub(super) const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub(super) const REP_ERR_INVALID: u32 = 0x8000_0003;
pub(super) const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub(super) const INFO_BLOCK_SIZE: u16 = 3;
pub(super) const FLAG_C_NO_ZEROES: u32 = 2;
pub(super) const TRANSMIT_HAS_FLAGS: u16 = 1;
pub(super) const TRANSMIT_READ_ONLY: u16 = 1 << 1;
pub(super) const TRANSMIT_SEND_DF: u16 = 1 << 7;
pub(super) const TRANSMIT_CAN_MULTI_CONN: u16 = 1 << 8;
pub(super) const CMD_WRITE: u16 = 1;
pub(super) const CMD_FLUSH: u16 = 3;
pub(super) const CMD_CACHE: u16 = 5;
pub(super) const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub(super) const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
pub(super) const STATE_HOLE: u32 = 1;
pub(super) const EPERM: u32 = 1;
pub(super) const EIO: u32 = 5;
pub(super) const EINVAL: u32 = 22;
pub(super) const ENOTSUP: u32 = 95;
pub(super) const EOVERFLOW: u32 = 75;
