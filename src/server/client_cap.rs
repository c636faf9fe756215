//! At most `server.max_connections_per_client` connections open at once from one client,
//! so one address cannot take every connection slot. The client is the TCP peer (nothing of
//! the request is known at accept): an IPv4 address, or an IPv6 address by its /64, which
//! one subscriber holds whole (as the rate limits key it, `edge::limit_key`). Behind a load
//! balancer the peer is the balancer, hence off (0) by default.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Whom connections are counted under: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6Prefix(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4.into()),
                None => ClientKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// The open connections of each client, when capped.
#[derive(Debug)]
pub struct ClientCap {
    cap: usize,
    open: Arc<Mutex<HashMap<ClientKey, usize>>>,
}

impl ClientCap {
    /// `cap` connections per client; `None` for 0 (no cap).
    pub fn new(cap: usize) -> Option<Self> {
        (cap > 0).then(|| ClientCap {
            cap,
            open: Arc::default(),
        })
    }

    /// A place for one more connection from `ip`, held until the guard drops; `None` when
    /// the client already has `cap` open.
    pub fn admit(&self, ip: IpAddr) -> Option<ClientConnection> {
        let key = ClientKey::of(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(ClientConnection {
            key,
            open: self.open.clone(),
        })
    }
}

/// One open connection counted against its client; a client with none left is forgotten,
/// so the map holds only clients with connections open (at most `max_connections`).
#[derive(Debug)]
pub struct ClientConnection {
    key: ClientKey,
    open: Arc<Mutex<HashMap<ClientKey, usize>>>,
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_client_gets_cap_connections_and_one_more_once_one_closes() {
        let cap = ClientCap::new(2).expect("a cap");

        let first = cap.admit(ip("192.0.2.7"));
        let second = cap.admit(ip("192.0.2.7"));
        let third = cap.admit(ip("192.0.2.7"));
        let other = cap.admit(ip("192.0.2.8"));
        drop(first);
        let again = cap.admit(ip("192.0.2.7"));

        assert!(second.is_some() && other.is_some() && again.is_some());
        assert!(third.is_none());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let cap = ClientCap::new(1).expect("a cap");

        let held = [
            cap.admit(ip("2001:db8:1:2::1")),
            cap.admit(ip("192.0.2.7")),
            cap.admit(ip("2001:db8:1:3::1")),
        ];

        assert!(held.iter().all(Option::is_some));
        assert!(cap.admit(ip("2001:db8:1:2:ffff::9")).is_none());
        assert!(cap.admit(ip("::ffff:192.0.2.7")).is_none());
    }

    #[test]
    fn clients_without_connections_are_forgotten_and_zero_means_no_cap() {
        let cap = ClientCap::new(3).expect("a cap");

        let connections: Vec<_> = (0..3).map(|_| cap.admit(ip("192.0.2.7"))).collect();
        drop(connections);

        assert!(cap.open.lock().unwrap().is_empty());
        assert!(ClientCap::new(0).is_none());
    }
}
