//! The client's IP: the TCP peer, or the entry a trusted proxy appended to
//! `X-Forwarded-For`.

use std::net::IpAddr;

use axum::http::{HeaderMap, Request};

use crate::server::peer_addr;

/// The client address behind `trusted_hops` proxies that each append the address they saw
/// to `X-Forwarded-For`. Entries left of the trusted ones are written by the client and
/// never believed. `None` when nothing usable is known.
pub fn client_ip<B>(request: &Request<B>, trusted_hops: usize) -> Option<IpAddr> {
    let peer = peer_addr(request).map(|addr| addr.ip());
    if trusted_hops == 0 {
        return peer;
    }
    forwarded_client(request.headers(), trusted_hops).or(peer)
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
