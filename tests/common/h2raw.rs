//! Hand-made HTTP/2 frames, for what a well-behaved client (the `h2` crate) refuses to send:
//! oversize frames, header lists past any limit, CONTINUATION floods. HPACK literals only
//! (no Huffman, no dynamic table), which every decoder must accept.
#![allow(dead_code)]

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// HTTP/2 error code FRAME_SIZE_ERROR (RFC 9113 §7).
pub const FRAME_SIZE_ERROR: u32 = 0x6;

/// One frame: 24-bit length, type, flags, stream id, payload. The length field is the
/// payload's real length (truncated to 24 bits), so an oversize frame is really that big.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK string literal: 7-bit prefixed length, no Huffman.
fn string(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix; `first` holds the bits above the prefix.
fn integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// An HPACK header block: literal fields without indexing, new names.
pub fn header_block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        string(&mut out, name);
        string(&mut out, value);
    }
    out
}

/// The request head of a POST to `path` on stream `stream`, plus `extra` fields.
pub fn post_head(path: &str, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"localhost"),
        (b":path", path.as_bytes()),
    ];
    fields.extend_from_slice(extra);
    header_block(&fields)
}

/// Preface, empty SETTINGS, then one POST (HEADERS + one DATA frame ending the stream).
pub fn one_request(path: &str, extra: &[(&[u8], &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_HEADERS, 1, &post_head(path, extra)));
    out.extend(frame(DATA, END_STREAM, 1, body));
    out
}

/// Reads frames from `bytes` (a server's whole output): (type, flags, stream, payload).
pub fn parse_frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        if bytes.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        frames.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    frames
}

/// The error code of the first GOAWAY in a server's output.
pub fn goaway_code(bytes: &[u8]) -> Option<u32> {
    parse_frames(bytes)
        .into_iter()
        .find(|f| f.0 == GOAWAY && f.3.len() >= 8)
        .map(|f| u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]))
}
