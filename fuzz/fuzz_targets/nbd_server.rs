//! The agent's NBD server reads whatever a client sends (QEMU, or anything
//! that can reach the socket): any bytes must end the session with an
//! answer or an error, never a panic or a read outside the disk.
#![no_main]

use std::{
    io::{self, Cursor, Read, Write},
    sync::Mutex,
};

use imprint_agent::nbd::server::{BlockSource, Served, serve_session};
use imprint_store::reader::Extent;
use libfuzzer_sys::fuzz_target;

/// A 1 MiB disk: the first half data, the rest zeros.
struct Disk;

const SIZE: u64 = 1 << 20;

impl BlockSource for Disk {
    fn size_bytes(&self) -> u64 {
        SIZE
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        assert!(offset + buf.len() as u64 <= SIZE, "read outside the disk");
        buf.fill(1);
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, String> {
        assert!(offset + len <= SIZE, "status outside the disk");
        Ok(vec![Extent { len, zero: offset >= SIZE / 2 }])
    }
}

struct Duplex {
    input: Cursor<Vec<u8>>,
    output: io::Sink,
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

fuzz_target!(|data: &[u8]| {
    let mut io = Duplex {
        input: Cursor::new(data.to_vec()),
        output: io::sink(),
    };
    let failure = Mutex::new(None);
    let served = Served {
        name: "vda",
        source: &Disk,
        failure: &failure,
    };
    let _ = serve_session(&mut io, &served);
});
