//! A fake node: anything that holds a node's address (or sits in the path to it, under a
//! non-verifying `sslmode`) and answers repmgr-nat's question with a row of the wrong
//! shape. It speaks just enough of PostgreSQL's protocol to be asked: no TLS (it refuses
//! the SSLRequest, as a server without TLS does), a login accepted without a password,
//! and every query described and answered as `bool, int8, pg_lsn, bool, int4, pg_lsn`,
//! where repmgr-nat expects an `int4` timeline second. Used by repmgr-nat's unit tests
//! (on loopback) and by the lab (at a node's address).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// The types of the row it describes: bool, int8 (where an int4 is expected), pg_lsn,
/// bool, int4, pg_lsn.
const COLUMNS: [u32; 6] = [16, 20, 3220, 16, 23, 3220];

/// Serves every connection on `listener` in turn, for ever; prints one line per session
/// (`<what happened>`) through `said`.
pub fn serve(listener: TcpListener, said: &mut dyn FnMut(&str)) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        said(&session(stream));
    }
}

/// One client's session, until it hangs up.
fn session(mut stream: TcpStream) -> String {
    let mut len = [0u8; 4];
    let mut answered = 0;
    loop {
        // the startup packet (or an SSLRequest) has no type byte
        if stream.read_exact(&mut len).is_err() {
            return "closed before the startup".into();
        }
        let Some(body) = body(&mut stream, len) else { return "closed in the startup".into() };
        if body.get(..4) == Some(&80877103u32.to_be_bytes()[..]) {
            if stream.write_all(b"N").is_err() {
                return "closed".into();
            }
            continue;
        }
        break;
    }
    // AuthenticationOk, then ReadyForQuery
    let mut out = message(b'R', &0u32.to_be_bytes());
    out.extend(message(b'Z', b"I"));
    if stream.write_all(&out).is_err() {
        return "closed after the login".into();
    }
    loop {
        let mut kind = [0u8; 1];
        if stream.read_exact(&mut kind).is_err() || stream.read_exact(&mut len).is_err() {
            return format!("hung up after {answered} wrong rows");
        }
        if body(&mut stream, len).is_none() {
            return "closed in a message".into();
        }
        let reply = match kind[0] {
            b'P' => message(b'1', b""),
            b'D' => [message(b't', &[0, 1, 0, 0, 0, 25]), row_description()].concat(),
            b'B' => message(b'2', b""),
            b'E' => {
                answered += 1;
                [data_row(), message(b'C', b"SELECT 1\0")].concat()
            }
            b'C' => message(b'3', b""),
            b'S' | b'Q' => message(b'Z', b"I"),
            b'X' => return format!("client ended after {answered} wrong rows"),
            _ => Vec::new(),
        };
        if stream.write_all(&reply).is_err() {
            return format!("closed after {answered} wrong rows");
        }
    }
}

/// A message's body (its length includes the 4 bytes of the length).
fn body(stream: &mut TcpStream, len: [u8; 4]) -> Option<Vec<u8>> {
    let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4).min(100_000)];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend((body.len() as u32 + 4).to_be_bytes());
    out.extend(body);
    out
}

fn row_description() -> Vec<u8> {
    let mut body = (COLUMNS.len() as u16).to_be_bytes().to_vec();
    for (i, oid) in COLUMNS.iter().enumerate() {
        body.extend(format!("c{i}\0").bytes());
        body.extend(0u32.to_be_bytes()); // table
        body.extend(0u16.to_be_bytes()); // column
        body.extend(oid.to_be_bytes());
        body.extend((-1i16).to_be_bytes()); // size
        body.extend((-1i32).to_be_bytes()); // modifier
        body.extend(1u16.to_be_bytes()); // binary
    }
    message(b'T', &body)
}

/// In recovery, timeline 2 as an int8, LSN 0/3000000, no slot.
fn data_row() -> Vec<u8> {
    let values: [Option<Vec<u8>>; 6] = [
        Some(vec![1]),
        Some(2i64.to_be_bytes().to_vec()),
        Some(0x300_0000u64.to_be_bytes().to_vec()),
        Some(vec![0]),
        None,
        None,
    ];
    let mut body = (values.len() as u16).to_be_bytes().to_vec();
    for value in values {
        match value {
            Some(bytes) => {
                body.extend((bytes.len() as i32).to_be_bytes());
                body.extend(bytes);
            }
            None => body.extend((-1i32).to_be_bytes()),
        }
    }
    message(b'D', &body)
}
