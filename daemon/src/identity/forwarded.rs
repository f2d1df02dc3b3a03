//! Proxy mode: the client identity a trusted reverse proxy forwards in request headers.
//!
//! A reverse proxy that terminates mutual TLS passes the verified client certificate on in a
//! header (Envoy: `x-forwarded-client-cert`; nginx: a URL-escaped PEM such as
//! `$ssl_client_escaped_cert`) and the client address in `X-Forwarded-For`. Anyone who can
//! reach the plain-HTTP listener can write those headers too, so they are believed only from
//! a peer listed in `listener.proxy.trusted_proxies`; from any other peer they are ignored
//! (and the server logs a warning).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::HeaderName;

use super::{CertIdentity, ConnInfo};
use crate::config::{ClientCertFormat, ProxyConfig};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What the forwarded headers of one request establish.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The client certificate the trusted proxy verified.
    pub client_cert: Option<CertIdentity>,
    /// The client address the trusted proxy saw.
    pub client_ip: Option<IpAddr>,
    /// Forwarding headers present on a request from an untrusted peer, hence ignored.
    pub ignored_headers: Vec<HeaderName>,
    /// A trusted proxy sent a header we could not parse (the request stays unauthenticated).
    pub error: Option<String>,
    /// `X-Forwarded-For` entries that are not addresses (`unknown`, garbage), skipped; at
    /// most [`MAX_REPORTED`] of them, each cut to 64 characters, for the log.
    pub malformed_for: Vec<String>,
}

/// How many malformed `X-Forwarded-For` entries one request reports.
pub const MAX_REPORTED: usize = 4;

/// Whether a connection's peer is a configured trusted proxy. `None` is a Unix-socket peer.
pub fn is_trusted_peer(peer: Option<SocketAddr>, cfg: &ProxyConfig) -> bool {
    match peer {
        None => cfg.trust_unix_peers,
        Some(addr) => {
            let ip = canonical(addr.ip());
            cfg.trusted_proxies.iter().any(|net| net.contains(&ip))
        }
    }
}

/// Reads the forwarded client certificate and address of one request, honouring them only
/// when `conn.trusted_proxy` is set.
pub fn forwarded_identity(conn: &ConnInfo, headers: &HeaderMap, cfg: &ProxyConfig) -> Forwarded {
    let mut out = Forwarded::default();
    if !conn.trusted_proxy {
        for name in [&cfg.client_cert_header, &X_FORWARDED_FOR] {
            if headers.contains_key(name) {
                out.ignored_headers.push(name.clone());
            }
        }
        return out;
    }
    let mut values = headers.get_all(&cfg.client_cert_header).iter();
    if let Some(value) = values.next() {
        let parsed = if values.next().is_some() {
            Err(format!("{}: sent more than once", cfg.client_cert_header))
        } else {
            value
                .to_str()
                .map_err(|_| "not ASCII".to_owned())
                .and_then(|text| match cfg.client_cert_format {
                    ClientCertFormat::Xfcc => parse_xfcc(text),
                    ClientCertFormat::EscapedPem => parse_escaped_pem(text),
                })
                .map_err(|e| format!("{}: {e}", cfg.client_cert_header))
        };
        match parsed {
            Ok(identity) => out.client_cert = identity,
            Err(e) => out.error = Some(e),
        }
    }
    let (client_ip, malformed) = client_ip(headers, cfg);
    out.client_ip = client_ip;
    out.malformed_for = malformed;
    out
}

/// One `X-Forwarded-For` entry: an address, or text that is not one.
enum Entry<'a> {
    Ip(IpAddr),
    Malformed(&'a str),
}

/// The client address from `X-Forwarded-For`, and the malformed entries it skipped.
///
/// Read from the right: entries that are trusted proxies are hops and are passed over; the
/// first other entry is the client, as the outermost trusted proxy saw it. Entries further
/// left were written by the client (or proxies nobody vouches for) and prove nothing, so a
/// malformed one there (`unknown, 203.0.113.9`) is skipped without losing the address. A
/// malformed entry *in the client's place* yields no address (the TCP peer is used): taking
/// the next valid entry to its left would let the client choose its own address.
/// With only trusted entries, the left-most one is the client (a proxy calling us itself).
fn client_ip(headers: &HeaderMap, cfg: &ProxyConfig) -> (Option<IpAddr>, Vec<String>) {
    let mut entries: Vec<Entry<'_>> = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        match value.to_str() {
            Ok(text) => entries.extend(text.split(',').map(|part| {
                let part = part.trim();
                parse_ip(part).map_or(Entry::Malformed(part), Entry::Ip)
            })),
            Err(_) => entries.push(Entry::Malformed("(not ASCII)")),
        }
    }
    let malformed: Vec<String> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Malformed(text) => Some(text.chars().take(64).collect()),
            Entry::Ip(_) => None,
        })
        .take(MAX_REPORTED)
        .collect();
    let trusted = |ip: &IpAddr| cfg.trusted_proxies.iter().any(|net| net.contains(ip));
    let mut first_trusted = None;
    for entry in entries.iter().rev() {
        match entry {
            Entry::Ip(ip) if trusted(ip) => first_trusted = Some(*ip),
            Entry::Ip(ip) => return (Some(*ip), malformed),
            Entry::Malformed(_) => return (None, malformed),
        }
    }
    // Every entry is a trusted proxy (or there are none): the left-most is the client.
    (first_trusted, malformed)
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(canonical)
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Parses a URL-escaped PEM certificate (nginx `$ssl_client_escaped_cert`). An empty value
/// or `-` means the proxy saw no client certificate.
pub fn parse_escaped_pem(value: &str) -> Result<Option<CertIdentity>, String> {
    let value = value.trim();
    if value.is_empty() || value == "-" || value == "(null)" {
        return Ok(None);
    }
    let pem = percent_encoding::percent_decode_str(value).collect::<Vec<u8>>();
    CertIdentity::from_pem(&pem)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Parses Envoy's `x-forwarded-client-cert`. Each proxy hop appends one comma-separated
/// element; the last is the one our trusted proxy added. A `Cert` field (URL-escaped PEM) is
/// parsed in full; otherwise the identity is assembled from `Hash`, `Subject`, `URI`, `DNS`.
pub fn parse_xfcc(value: &str) -> Result<Option<CertIdentity>, String> {
    let elements = split_quoted(value, ',');
    let Some(element) = elements.last().filter(|e| !e.trim().is_empty()) else {
        return Ok(None);
    };
    let mut identity = CertIdentity::default();
    let mut cert = None;
    for pair in split_quoted(element, ';') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (key, raw) = pair
            .split_once('=')
            .ok_or_else(|| format!("malformed field `{}`", truncate(pair)))?;
        let val = unquote(raw.trim());
        match key.trim().to_ascii_lowercase().as_str() {
            "cert" => cert = Some(val),
            "hash" => {
                if val.len() != 64 || !val.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err("Hash is not a hex SHA-256 digest".into());
                }
                identity.sha256_fingerprint = val.to_ascii_lowercase();
            }
            "subject" => identity.common_name = common_name(&val),
            "uri" => identity.uris.push(val),
            "dns" => identity.dns_names.push(val),
            _ => {}
        }
    }
    if let Some(cert) = cert {
        let parsed = parse_escaped_pem(&cert)?.ok_or("Cert is empty")?;
        if !identity.sha256_fingerprint.is_empty()
            && identity.sha256_fingerprint != parsed.sha256_fingerprint
        {
            return Err("Hash does not match Cert".into());
        }
        return Ok(Some(parsed));
    }
    if identity.sha256_fingerprint.is_empty() {
        return Err("neither Cert nor Hash present".into());
    }
    Ok(Some(identity))
}

/// `CN=alice,OU=x,O=y` → `alice`.
fn common_name(subject: &str) -> Option<String> {
    subject.split(',').find_map(|rdn| {
        let (k, v) = rdn.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("CN")
            .then(|| v.trim().to_owned())
    })
}

/// Splits on `sep` outside double quotes (a backslash escapes the next character).
fn split_quoted(text: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c == sep && !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn unquote(text: &str) -> String {
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => text.to_owned(),
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests;
