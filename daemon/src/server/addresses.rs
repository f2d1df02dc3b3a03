//! `limits.max_connections_per_address`: how many connections (pending handshakes and open
//! ones together) one client address holds. Without it, one client could fill every
//! pending-handshake and connection slot on its own.
//!
//! IPv6 clients are counted per /64 (what one host usually holds), IPv4 per address.
//! Trusted proxies (proxy mode) and Unix-socket peers are exempt: every client of a proxy
//! shares its address.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::config::{Config, ListenerMode};
use crate::counts::{Counts, Held};
use crate::identity::forwarded::is_trusted_peer;

/// Open and pending connections per client address.
#[derive(Debug)]
pub struct AddressTable {
    held: Arc<Counts<IpAddr>>,
}

impl Default for AddressTable {
    fn default() -> Self {
        AddressTable {
            held: Counts::new(),
        }
    }
}

/// One connection's place in the table; released on drop.
pub type AddressSlot = Held<IpAddr>;

/// Refused: the address already holds `held` connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressFull {
    pub held: usize,
    pub limit: usize,
}

impl AddressTable {
    /// Counts a new connection from `peer` against `config`'s per-address cap. `Ok(None)`:
    /// the peer is exempt.
    pub fn admit(
        &self,
        peer: Option<SocketAddr>,
        config: &Config,
    ) -> Result<Option<AddressSlot>, AddressFull> {
        let Some(addr) = peer else {
            return Ok(None);
        };
        if let ListenerMode::Proxy(proxy) = &config.listener.mode
            && is_trusted_peer(peer, proxy)
        {
            return Ok(None);
        }
        let limit = config.limits.max_connections_per_address.get();
        self.held
            .take(key(addr.ip()), limit)
            .map(Some)
            .map_err(|held| AddressFull { held, limit })
    }

    /// Connections `ip` holds now.
    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> usize {
        self.held.held(&key(ip))
    }
}

/// The unit a client is counted in: an IPv4 address (IPv4-mapped IPv6 included), or an
/// IPv6 /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_limits: &str, proxy: bool) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let listener = if proxy {
            "[listener]\nmode = \"proxy\"\naddress = \"127.0.0.1:0\"\n\
             [listener.proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n"
        } else {
            "[listener]\nmode = \"proxy\"\naddress = \"127.0.0.1:0\"\n[listener.proxy]\n"
        };
        let toml = format!(
            "{listener}[limits]\n{extra_limits}\n[[models]]\nname = \"m\"\nbackend = \"test\"\n"
        );
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(&path).unwrap()
    }

    fn peer(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn caps_each_address_and_releases_on_drop() {
        let table = Arc::new(AddressTable::default());
        let cfg = config("max_connections_per_address = 2", false);
        let a = table.admit(peer("127.0.0.2:1000"), &cfg).unwrap();
        let b = table.admit(peer("127.0.0.2:1001"), &cfg).unwrap();
        assert!(a.is_some() && b.is_some());
        assert_eq!(
            table.admit(peer("127.0.0.2:1002"), &cfg).unwrap_err(),
            AddressFull { held: 2, limit: 2 }
        );
        // Another address is not affected.
        assert!(table.admit(peer("127.0.0.3:1000"), &cfg).is_ok());
        drop(a);
        assert_eq!(table.held("127.0.0.2".parse().unwrap()), 1);
        assert!(table.admit(peer("127.0.0.2:1003"), &cfg).is_ok());
        drop(b);
        assert_eq!(
            table.held("127.0.0.3".parse().unwrap()),
            0,
            "entries go away"
        );
    }

    #[test]
    fn ipv6_counts_per_slash_64_and_mapped_ipv4_as_ipv4() {
        let table = Arc::new(AddressTable::default());
        let cfg = config("max_connections_per_address = 1", false);
        let _a = table.admit(peer("[2001:db8::1]:1"), &cfg).unwrap();
        assert!(table.admit(peer("[2001:db8::2]:1"), &cfg).is_err());
        assert!(table.admit(peer("[2001:db8:0:1::1]:1"), &cfg).is_ok());
        let _b = table.admit(peer("10.0.0.1:1"), &cfg).unwrap();
        assert!(table.admit(peer("[::ffff:10.0.0.1]:1"), &cfg).is_err());
    }

    #[test]
    fn trusted_proxies_and_unix_peers_are_exempt() {
        let table = Arc::new(AddressTable::default());
        let cfg = config("max_connections_per_address = 1", true);
        for _ in 0..3 {
            assert!(table.admit(peer("127.0.0.1:1"), &cfg).unwrap().is_none());
            assert!(table.admit(None, &cfg).unwrap().is_none());
        }
        let _held = table.admit(peer("127.0.0.2:1"), &cfg).unwrap();
        assert!(table.admit(peer("127.0.0.2:2"), &cfg).is_err());
    }
}
