//! How targets with several inputs carve them out of one byte string. NUL separates text
//! parts (none of the texts we feed needs a NUL); a binary part is length-prefixed.

/// The parts of `data` between NUL bytes; at most `max` parts (the last keeps any further
/// NULs).
pub fn nul_parts(data: &[u8], max: usize) -> Vec<&[u8]> {
    data.splitn(max, |&b| b == 0).collect()
}

/// `data` as text: invalid UTF-8 becomes U+FFFD, as a lenient reader would see it.
pub fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// A `u16` little-endian length, that many bytes, then the rest. Short input gives empty
/// parts.
pub fn prefixed(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return (&[], data);
    };
    let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    rest.split_at(len)
}

/// The inverse of [`prefixed`], for building seeds.
pub fn join_prefixed(first: &[u8], rest: &[u8]) -> Vec<u8> {
    let len = u16::try_from(first.len()).unwrap_or(u16::MAX);
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&first[..usize::from(len)]);
    out.extend_from_slice(rest);
    out
}
