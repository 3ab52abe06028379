//! gzip detection and capped decompression (libdeflate for one member, zlib-rs streaming for
//! multi-member streams).

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

pub(super) fn is_gzip(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] == 0x1f && b[1] == 0x8b
}

/// Decompress (if gzip by magic) with a cap: more than `cap` bytes is not needed.
pub(super) fn maybe_gunzip(raw: Vec<u8>, cap: Option<usize>, path: &Path) -> Result<Vec<u8>> {
    if !is_gzip(&raw) {
        return Ok(raw);
    }
    let hint = if raw.len() >= 4 {
        let n = raw.len();
        u32::from_le_bytes([raw[n - 4], raw[n - 3], raw[n - 2], raw[n - 1]]) as usize
    } else {
        0
    };
    if let Some(out) = cap.and_then(|c| gunzip_whole(&raw, c, hint)) {
        crate::volume::scratch::give(raw);
        return Ok(out);
    }
    let mut out = Vec::with_capacity(cap.map_or(hint, |c| c.min(hint.max(1 << 16))));
    let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]);
    let res = match cap {
        Some(c) => dec.by_ref().take(c as u64).read_to_end(&mut out),
        None => dec.read_to_end(&mut out),
    };
    res.map_err(|e| {
        Error::volume(format!(
            "{}: corrupt or truncated gzip data ({e})",
            path.display()
        ))
    })?;
    Ok(out)
}

/// The first `cap` bytes through libdeflate (whole-buffer inflate, ~1.4x zlib-rs here) when the
/// first gzip member holds them and fits a buffer of the trailer's size (or `cap`); None
/// otherwise (larger or several members, corrupt data), and the streaming decoder decides,
/// with its error messages. libdeflate checks the member's CRC32 and size.
pub(super) fn gunzip_whole(raw: &[u8], cap: usize, isize_hint: usize) -> Option<Vec<u8>> {
    // allocate only what the stream can hold: deflate expands at most ~1032:1, and the trailer
    // gives the size modulo 2^32
    if cap > raw.len().saturating_mul(1032) || (cap < 1 << 32 && isize_hint < cap) {
        return None;
    }
    let len = if isize_hint >= cap && isize_hint - cap <= 1 << 20 {
        isize_hint
    } else {
        cap
    };
    // a kept buffer inside the pipeline's scratch scope (stale bytes: libdeflate overwrites the
    // first `n`, the rest is cut off)
    let mut out = crate::volume::scratch::take_len(len);
    let n = match libdeflater::Decompressor::new().gzip_decompress(raw, &mut out) {
        Ok(n) => n,
        Err(_) => {
            crate::volume::scratch::give(out);
            return None;
        }
    };
    if n < cap {
        crate::volume::scratch::give(out);
        return None;
    }
    out.truncate(n);
    Some(out)
}
