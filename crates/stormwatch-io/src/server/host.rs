//! Which `Host` and `Origin` a listener answers, against DNS rebinding and cross-site requests.
//!
//! A web page can make a browser send requests to 127.0.0.1 under a name the page controls
//! (DNS rebinding): the browser then lets the page read the answers, as the name is its own.
//! The request still names the attacker's host, so a listener answers only the `Host` values
//! it serves: IP addresses (which cannot be rebound), `localhost` and `*.localhost`, and the
//! names in `server.allowed_hosts` (exact, or `.example.com` for a domain and its subdomains;
//! `"*"` for any). A request from a browser page of another origin (an `Origin` header that is
//! not the request's own host, nor a host in `server.allowed_hosts`) is refused too.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap};

/// The host names a listener answers besides IP addresses and `localhost`.
#[derive(Clone, Debug, Default)]
pub struct AllowedHosts {
    names: Arc<[String]>,
}

impl AllowedHosts {
    /// From `server.allowed_hosts`: exact names, `.domain` suffixes, or `"*"`.
    pub fn new(names: &[String]) -> AllowedHosts {
        AllowedHosts { names: names.iter().map(|n| n.trim().to_ascii_lowercase()).collect() }
    }

    fn lists(&self, name: &str) -> bool {
        self.names.iter().any(|allowed| {
            allowed == "*"
                || allowed == name
                || allowed.strip_prefix('.').is_some_and(|domain| {
                    name == domain || name.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.'))
                })
        })
    }

    /// Whether a request naming `host` (`Host` header: name or address, maybe with a port) is
    /// answered.
    pub fn allows(&self, host: &str) -> bool {
        let name = host_name(host);
        if name.is_empty() {
            return false;
        }
        name.parse::<IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost") || self.lists(&name)
    }

    /// Why a request with these headers is refused, or `None` when it is answered. A request
    /// without `Host` (HTTP/1.0; browsers always send one) is answered.
    pub fn refusal(&self, headers: &HeaderMap) -> Option<String> {
        let host = headers.get(header::HOST).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if let Some(host) = &host {
            if !self.allows(host) {
                let shown = stormwatch_model::clean_name(host, 100).0;
                return Some(format!(
                    "this listener does not serve the host {shown:?}: add it to server.allowed_hosts (requests \
                     by IP address or localhost are always served)"
                ));
            }
        }
        let origin = headers.get(header::ORIGIN)?;
        let origin = String::from_utf8_lossy(origin.as_bytes());
        let authority = origin.split_once("://").map(|(_, rest)| rest.trim_end_matches('/'));
        let same_origin = authority.is_some_and(|a| host.as_deref().is_some_and(|h| a.eq_ignore_ascii_case(h)));
        let listed = authority.is_some_and(|a| self.lists(&host_name(a)));
        if same_origin || listed {
            return None;
        }
        let shown = stormwatch_model::clean_name(&origin, 100).0;
        Some(format!(
            "cross-origin request from {shown:?} refused: only pages served by this listener, or from hosts in \
             server.allowed_hosts, may call it"
        ))
    }
}

/// The lowercase host name (or address) of `host[:port]`, `[v6]` unbracketed.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            // One colon: name:port. More: a bare IPv6 address.
            Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn loopback_addresses_and_listed_names_are_served_and_others_are_not() {
        let hosts = AllowedHosts::new(&["stormwatch.internal".into(), ".corp.example".into()]);
        for served in [
            "127.0.0.1:9464",
            "localhost:9464",
            "LOCALHOST",
            "[::1]:9464",
            "::1",
            "10.1.2.3",
            "console.localhost:80",
            "stormwatch.internal:9464",
            "corp.example",
            "sw.eu.corp.example:443",
            "localhost.",
        ] {
            assert!(hosts.allows(served), "{served}");
        }
        for refused in
            ["evil.example", "evil.example:9464", "notcorp.example", "corp.example.evil", "", "localhost.evil"]
        {
            assert!(!hosts.allows(refused), "{refused}");
        }
        assert!(AllowedHosts::new(&["*".into()]).allows("anything.example"));
    }

    #[test]
    fn foreign_hosts_and_cross_origin_pages_are_refused() {
        let hosts = AllowedHosts::default();
        assert!(hosts.refusal(&headers(&[("host", "127.0.0.1:9464")])).is_none());
        assert!(hosts.refusal(&HeaderMap::new()).is_none());
        let rebound = hosts.refusal(&headers(&[("host", "evil.example:9464")])).unwrap();
        assert!(rebound.contains("\"evil.example:9464\"") && rebound.contains("server.allowed_hosts"), "{rebound}");
        // The console's own requests carry its origin.
        let own = headers(&[("host", "127.0.0.1:9464"), ("origin", "http://127.0.0.1:9464")]);
        assert!(hosts.refusal(&own).is_none());
        for origin in ["http://evil.example", "http://127.0.0.1:8080", "null", "http://10.0.0.5:9464"] {
            let refused = hosts.refusal(&headers(&[("host", "127.0.0.1:9464"), ("origin", origin)]));
            assert!(refused.is_some_and(|r| r.contains("cross-origin")), "{origin}");
        }
        // A console behind a proxy with a listed name.
        let proxied = AllowedHosts::new(&["sw.corp.example".into()]);
        let behind = headers(&[("host", "127.0.0.1:9464"), ("origin", "https://sw.corp.example")]);
        assert!(proxied.refusal(&behind).is_none());
    }
}
