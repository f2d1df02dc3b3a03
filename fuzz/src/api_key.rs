//! `api_key`: API keys and key ids as a client presents them, checked against the format
//! `key.rs` documents (`alk_` + 12 base62 id + `_` + 22 base62 secret + 6 base62 CRC32 of
//! everything before it). The target also recomputes the checksum of the input's first 38
//! bytes, so inputs get past the checksum and reach the rest of the parser.

use airlock_policy::key::{CRC_LEN, ID_LEN, KEY_LEN, PREFIX, looks_like_key};
use airlock_policy::{ApiKey, KeyId};

use crate::split;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

pub fn run(data: &[u8]) {
    let text = split::text(data);
    check(&text);
    let _ = KeyId::parse(&text);
    let _ = looks_like_key(&text);
    // The same body with a correct checksum.
    if let Some(body) = data.get(..KEY_LEN - CRC_LEN)
        && let Ok(body) = std::str::from_utf8(body)
    {
        let mut key = body.to_owned();
        key.push_str(&crc(body));
        check(&key);
    }
}

/// `ApiKey::parse` accepts exactly the documented format, and its id is the key's.
fn check(text: &str) {
    let expected = well_formed(text);
    match ApiKey::parse(text) {
        Ok(key) => {
            assert!(expected, "accepted a malformed key");
            assert_eq!(
                key.id().as_str(),
                &text[PREFIX.len()..PREFIX.len() + ID_LEN]
            );
            assert_eq!(key.expose(), text);
            assert!(!format!("{key:?}").contains(&text[PREFIX.len() + ID_LEN..]));
            assert!(KeyId::parse(key.id().as_str()).is_ok());
        }
        Err(e) => assert!(!expected, "refused a well-formed key: {e}"),
    }
}

/// The format, written independently of `key.rs`.
fn well_formed(text: &str) -> bool {
    let b = text.as_bytes();
    let base62 = |s: &[u8]| s.iter().all(u8::is_ascii_alphanumeric);
    let id_end = PREFIX.len() + ID_LEN;
    b.len() == KEY_LEN
        && b.starts_with(PREFIX.as_bytes())
        && base62(&b[PREFIX.len()..id_end])
        && b[id_end] == b'_'
        && base62(&b[id_end + 1..])
        && crc(&text[..KEY_LEN - CRC_LEN]) == text[KEY_LEN - CRC_LEN..]
}

/// Six base62 digits of the CRC32, most significant first.
fn crc(body: &str) -> String {
    let mut crc = crc32(body.as_bytes());
    let mut out = [b'0'; CRC_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// CRC-32 (IEEE), bitwise.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Seeds: a fresh key, and near-misses of it.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let key = ApiKey::generate().expose().to_owned();
    let mut bad_crc = key.clone().into_bytes();
    if let Some(last) = bad_crc.last_mut() {
        *last = if *last == b'0' { b'1' } else { b'0' };
    }
    let mut multibyte = key.clone();
    multibyte.replace_range(5..7, "é");
    vec![
        ("valid", key.clone().into_bytes()),
        ("bad_crc", bad_crc),
        ("multibyte", multibyte.into_bytes()),
        ("id", key.as_bytes()[4..16].to_vec()),
        ("short", key.as_bytes()[..20].to_vec()),
        ("bearer", format!("Bearer {key}").into_bytes()),
    ]
}
