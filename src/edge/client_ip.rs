//! The client's IP: the TCP peer, or the entry a trusted proxy appended to
//! `X-Forwarded-For`.

use std::net::IpAddr;

use axum::http::{Extensions, HeaderMap, Request};

use crate::server::peer_addr;

/// The client address behind `trusted_hops` proxies that each append the address they saw
/// to `X-Forwarded-For`. Entries left of the trusted ones are written by the client and
/// never believed. `None` when nothing usable is known.
pub fn client_ip<B>(request: &Request<B>, trusted_hops: usize) -> Option<IpAddr> {
    client_ip_of(request.extensions(), request.headers(), trusted_hops)
}

/// [`client_ip`] from a request's parts (for extractors).
pub fn client_ip_of(
    extensions: &Extensions,
    headers: &HeaderMap,
    trusted_hops: usize,
) -> Option<IpAddr> {
    let peer = peer_addr(extensions).map(|addr| addr.ip());
    if trusted_hops == 0 {
        return peer;
    }
    forwarded_client(headers, trusted_hops).or(peer)
}

/// The key a client is rate limited under: an IPv4 address itself (an IPv4-mapped IPv6
/// address too), an IPv6 address by its /64, which one subscriber holds whole and can
/// draw any number of addresses from.
pub fn limit_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

fn forwarded_client(headers: &HeaderMap, trusted_hops: usize) -> Option<IpAddr> {
    // Several X-Forwarded-For lines form one list, in order.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    // The nearest proxy appended the last entry; `trusted_hops` proxies appended the last
    // `trusted_hops` entries, the outermost of which names the client.
    let index = hops.len().checked_sub(trusted_hops)?;
    hops[index].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_limited_by_their_64_and_ipv4_by_address() {
        let key = |text: &str| limit_key(text.parse().unwrap());

        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
    }
    use axum::http::HeaderValue;

    fn headers(xff: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in xff {
            headers.append("x-forwarded-for", HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn one_trusted_hop_believes_only_the_last_entry() {
        let spoofed = headers(&["6.6.6.6, 203.0.113.7"]);

        assert_eq!(
            forwarded_client(&spoofed, 1),
            Some("203.0.113.7".parse().unwrap())
        );
    }

    #[test]
    fn two_trusted_hops_read_across_header_lines() {
        let two = headers(&["6.6.6.6, 203.0.113.7", "10.0.0.2"]);

        assert_eq!(
            forwarded_client(&two, 2),
            Some("203.0.113.7".parse().unwrap())
        );
    }

    #[test]
    fn too_few_entries_or_garbage_give_nothing() {
        assert_eq!(forwarded_client(&headers(&["203.0.113.7"]), 2), None);
        assert_eq!(forwarded_client(&headers(&["not-an-ip"]), 1), None);
        assert_eq!(forwarded_client(&HeaderMap::new(), 1), None);
    }
}
