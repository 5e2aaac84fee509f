//! The real client of a request: who sent it, as the proxies in front of the service saw it.
//!
//! Every deployment has a load balancer or an ingress in front of its edge services, so the
//! network peer of an entry span is usually a proxy. The address of the client behind it is in
//! the forwarding headers the SDK captured (`OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST`),
//! recorded as `http.request.header.<name>`: a string, or an array of strings (one per header
//! line), in the specification's spelling (`x-forwarded-for`) or the Python SDK's
//! (`x_forwarded_for`). The client is, in this order:
//!
//! 1. from the forwarding headers (`forwarded`, then `x-forwarded-for`, then `x-real-ip`), when
//!    the network peer is a trusted proxy: walking the list from the right, as proxies append
//!    to it, the first address that is not a trusted proxy (the leftmost when all are). A
//!    header from a peer that is not a trusted proxy is never believed: anyone can write one.
//! 2. `client.address` (which some SDKs derive from the same headers, unchecked);
//! 3. `http.client_ip` (older conventions);
//! 4. the network peer (`network.peer.address`, `net.sock.peer.addr`, `net.peer.ip`).
//!
//! Trusted proxies are address ranges ([`TrustedProxies`], `[attribution] trusted_proxies`),
//! loopback and the private ranges by default. The result names its source, so an alert can
//! say where the address came from. Parsing is bounded: at most [`MAX_HOPS`] addresses of a
//! list are looked at, from the right.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

/// Addresses of a forwarding list looked at, from the right; further left is not reached.
pub const MAX_HOPS: usize = 32;

/// Where a client address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientSource {
    /// The standard `Forwarded` header's `for=`, from a trusted proxy.
    Forwarded,
    /// `X-Forwarded-For`, from a trusted proxy.
    XForwardedFor,
    /// `X-Real-IP`, from a trusted proxy.
    XRealIp,
    /// The span's `client.address` attribute.
    ClientAddress,
    /// The older `http.client_ip` attribute.
    HttpClientIp,
    /// The network peer (`network.peer.address`, `net.peer.ip`): the last hop.
    Peer,
}

impl ClientSource {
    /// How alerts name it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientSource::Forwarded => "forwarded",
            ClientSource::XForwardedFor => "x-forwarded-for",
            ClientSource::XRealIp => "x-real-ip",
            ClientSource::ClientAddress => "client.address",
            ClientSource::HttpClientIp => "http.client_ip",
            ClientSource::Peer => "network peer",
        }
    }
}

/// One address range: an address and how many leading bits of it are fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    address: IpAddr,
    bits: u8,
}

impl Range {
    fn contains(self, ip: IpAddr) -> bool {
        match (self.address, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u128::from(u32::from(net)) << 96, u128::from(u32::from(ip)) << 96, self.bits)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(u128::from(net), u128::from(ip), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8) -> bool {
    bits == 0 || (a ^ b) >> (128 - u32::from(bits.min(128))) == 0
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address ranges of proxies whose forwarding headers are believed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<Range>,
}

/// Loopback, the private IPv4 ranges (RFC 1918), carrier-grade NAT (RFC 6598) and IPv6 unique
/// local addresses: where load balancers and ingresses live.
pub const DEFAULT_TRUSTED_PROXIES: [&str; 7] =
    ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"];

/// An entry of `trusted_proxies` that is not an address range.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// The entry is neither a range nor an address.
    #[error("{0:?} is not an address range (write 10.0.0.0/8, fd00::/8 or one address)")]
    NotARange(String),
    /// The prefix length is too long for the address.
    #[error("{entry:?}: the prefix length must be 0 to {most}")]
    PrefixLength {
        /// The entry as written.
        entry: String,
        /// The longest prefix of its address family (32 or 128).
        most: u8,
    },
}

impl Default for TrustedProxies {
    fn default() -> Self {
        TrustedProxies::parse(&DEFAULT_TRUSTED_PROXIES).unwrap_or(TrustedProxies { ranges: Vec::new() })
    }
}

impl TrustedProxies {
    /// Ranges written as `10.0.0.0/8`, `2001:db8::/32` or a single address; the error names
    /// the entry that is neither.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, RangeError> {
        let ranges = entries
            .iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                let (address, bits) = match entry.split_once('/') {
                    Some((address, bits)) => (address, Some(bits)),
                    None => (entry, None),
                };
                let address: IpAddr = address.parse().map_err(|_| RangeError::NotARange(entry.into()))?;
                let address = canonical(address);
                let most = if address.is_ipv4() { 32 } else { 128 };
                let bits = match bits {
                    None => most,
                    Some(bits) => bits
                        .parse::<u8>()
                        .ok()
                        .filter(|bits| *bits <= most)
                        .ok_or_else(|| RangeError::PrefixLength { entry: entry.into(), most })?,
                };
                Ok(Range { address, bits })
            })
            .collect::<Result<_, RangeError>>()?;
        Ok(TrustedProxies { ranges })
    }

    /// None: every forwarding header is ignored.
    pub fn none() -> TrustedProxies {
        TrustedProxies { ranges: Vec::new() }
    }

    /// Whether `ip` is in one of the ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|range| range.contains(ip))
    }

    /// The trusted proxies every decoder of this process uses (set from the configuration at
    /// start; loopback and private ranges until then).
    pub fn global() -> Arc<TrustedProxies> {
        GLOBAL.read().map_or_else(|_| Arc::new(TrustedProxies::default()), |global| global.clone())
    }

    /// Makes these the trusted proxies of every decoder of this process.
    pub fn set_global(self) {
        if let Ok(mut global) = GLOBAL.write() {
            *global = Arc::new(self);
        }
    }
}

static GLOBAL: std::sync::LazyLock<RwLock<Arc<TrustedProxies>>> =
    std::sync::LazyLock::new(|| RwLock::new(Arc::new(TrustedProxies::default())));

/// The captured values of one forwarding header: up to four header lines (the last ones: the
/// proxies nearest the service appended them).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HeaderLines<'s> {
    lines: [&'s str; 4],
    count: usize,
}

impl<'s> HeaderLines<'s> {
    pub(crate) fn push(&mut self, line: &'s str) {
        if self.count == self.lines.len() {
            self.lines.rotate_left(1);
            self.count -= 1;
        }
        self.lines[self.count] = line;
        self.count += 1;
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The list's elements, rightmost first, at most [`MAX_HOPS`].
    fn elements_from_right(&self) -> impl Iterator<Item = &'s str> + '_ {
        self.lines[..self.count].iter().rev().flat_map(|line| line.rsplit(',')).map(str::trim).take(MAX_HOPS)
    }
}

/// What an entry span says about its client, borrowed from the payload.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ClientEvidence<'s> {
    pub(crate) forwarded: HeaderLines<'s>,
    pub(crate) x_forwarded_for: HeaderLines<'s>,
    pub(crate) x_real_ip: HeaderLines<'s>,
    pub(crate) client_address: Option<&'s str>,
    pub(crate) http_client_ip: Option<&'s str>,
    pub(crate) peer: Option<&'s str>,
}

/// One address of a forwarding list or attribute: `203.0.113.7`, `203.0.113.7:4711`,
/// `[2001:db8::1]:4711`, `2001:db8::1`, optionally quoted. `None` for `unknown`, obfuscated
/// identifiers (`_hidden`) and names.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok().map(canonical);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The `for=` node of one `Forwarded` element (`for=192.0.2.60;proto=http;by=203.0.113.43`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then_some(value.trim())
    })
}

impl ClientEvidence<'_> {
    /// The client and where it came from (see the module's documentation).
    pub(crate) fn resolve(&self, trusted: &TrustedProxies) -> Option<(IpAddr, ClientSource)> {
        let peer = self.peer.and_then(parse_node);
        // Through a trusted proxy: the forwarding headers, read from the right.
        if peer.is_some_and(|peer| trusted.contains(peer)) {
            let headers: [(&HeaderLines<'_>, ClientSource, bool); 3] = [
                (&self.forwarded, ClientSource::Forwarded, true),
                (&self.x_forwarded_for, ClientSource::XForwardedFor, false),
                (&self.x_real_ip, ClientSource::XRealIp, false),
            ];
            for (lines, source, rfc7239) in headers {
                if lines.is_empty() {
                    continue;
                }
                let mut leftmost = None;
                for element in lines.elements_from_right() {
                    let node = if rfc7239 { forwarded_for(element) } else { Some(element) };
                    // A hop that names no address (`unknown`, `_hidden`): the client is past
                    // what this header can tell; never skip to a forgeable entry beyond it.
                    let Some(ip) = node.and_then(parse_node) else {
                        leftmost = None;
                        break;
                    };
                    if !trusted.contains(ip) {
                        return Some((ip, source));
                    }
                    leftmost = Some(ip);
                }
                if let Some(ip) = leftmost {
                    return Some((ip, source));
                }
            }
        }
        // A peer that is not a trusted proxy is the client itself, whatever it claims.
        if let Some(peer) = peer.filter(|peer| !trusted.contains(*peer)) {
            return Some((peer, ClientSource::Peer));
        }
        if let Some(ip) = self.client_address.and_then(parse_node) {
            return Some((ip, ClientSource::ClientAddress));
        }
        if let Some(ip) = self.http_client_ip.and_then(parse_node) {
            return Some((ip, ClientSource::HttpClientIp));
        }
        peer.map(|peer| (peer, ClientSource::Peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn lines<'s>(values: &[&'s str]) -> HeaderLines<'s> {
        let mut lines = HeaderLines::default();
        for value in values {
            lines.push(value);
        }
        lines
    }

    fn behind(peer: &'static str) -> ClientEvidence<'static> {
        ClientEvidence { peer: Some(peer), ..Default::default() }
    }

    #[test]
    fn ranges_parse_and_contain() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8", "2001:db8::/32", "203.0.113.9"]).unwrap();
        assert!(trusted.contains(ip("10.200.1.1")) && !trusted.contains(ip("11.0.0.1")));
        assert!(trusted.contains(ip("2001:db8:1::5")) && !trusted.contains(ip("2001:db9::1")));
        assert!(trusted.contains(ip("203.0.113.9")) && !trusted.contains(ip("203.0.113.10")));
        assert!(trusted.contains(ip("::ffff:10.0.0.1")), "IPv4 written as IPv6");
        let defaults = TrustedProxies::default();
        for private in ["127.0.0.1", "::1", "10.1.2.3", "172.31.0.1", "192.168.1.1", "100.64.0.1", "fd00::1"] {
            assert!(defaults.contains(ip(private)), "{private}");
        }
        for public in ["198.51.100.7", "172.32.0.1", "8.8.8.8", "2001:db8::1"] {
            assert!(!defaults.contains(ip(public)), "{public}");
        }
        assert!(TrustedProxies::parse(&["10.0.0.0/33"]).unwrap_err().to_string().contains("0 to 32"));
        let error = TrustedProxies::parse(&["proxy.internal"]).unwrap_err();
        assert!(matches!(&error, RangeError::NotARange(entry) if entry == "proxy.internal"), "{error}");
        assert!(error.to_string().contains("\"proxy.internal\""));
        assert!(TrustedProxies::parse(&["0.0.0.0/0"]).unwrap().contains(ip("198.51.100.7")));
    }

    #[test]
    fn the_rightmost_untrusted_address_behind_trusted_proxies_is_the_client() {
        let trusted = TrustedProxies::default();
        let mut evidence = behind("127.0.0.1");
        // The client forged the leftmost entry; the proxies appended the real one and themselves.
        evidence.x_forwarded_for = lines(&["6.6.6.6, 198.51.100.23", "10.0.0.5"]);
        assert_eq!(evidence.resolve(&trusted), Some((ip("198.51.100.23"), ClientSource::XForwardedFor)));
        // Forwarded (RFC 7239) comes first, with quoted IPv6 and ports.
        evidence.forwarded = lines(&["for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\";by=10.0.0.5"]);
        assert_eq!(evidence.resolve(&trusted), Some((ip("2001:db8:cafe::17"), ClientSource::Forwarded)));
        // Every hop trusted: the leftmost.
        let mut internal = behind("10.0.0.5");
        internal.x_real_ip = lines(&["10.9.8.7"]);
        assert_eq!(internal.resolve(&trusted), Some((ip("10.9.8.7"), ClientSource::XRealIp)));
        // A hop that hides itself stops the walk: nothing forgeable to its left is believed.
        let mut hidden = behind("127.0.0.1");
        hidden.forwarded = lines(&["for=198.51.100.1, for=_hidden, for=10.0.0.5"]);
        hidden.client_address = Some("203.0.113.4");
        assert_eq!(hidden.resolve(&trusted), Some((ip("203.0.113.4"), ClientSource::ClientAddress)));
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_never_believed() {
        let trusted = TrustedProxies::default();
        let mut direct = behind("198.51.100.7");
        direct.x_forwarded_for = lines(&["10.0.0.1"]);
        direct.client_address = Some("10.0.0.1");
        assert_eq!(direct.resolve(&trusted), Some((ip("198.51.100.7"), ClientSource::Peer)));
        // No peer recorded: nothing vouches for the headers either.
        let unvouched = ClientEvidence { x_forwarded_for: lines(&["198.51.100.9"]), ..Default::default() };
        assert_eq!(unvouched.resolve(&trusted), None);
        // With no trusted proxies at all, the peer is the client.
        let mut proxied = behind("127.0.0.1");
        proxied.x_forwarded_for = lines(&["198.51.100.9"]);
        assert_eq!(proxied.resolve(&TrustedProxies::none()), Some((ip("127.0.0.1"), ClientSource::Peer)));
    }

    #[test]
    fn without_headers_the_conventions_are_read_in_order() {
        let trusted = TrustedProxies::default();
        let mut evidence = behind("127.0.0.1");
        assert_eq!(evidence.resolve(&trusted), Some((ip("127.0.0.1"), ClientSource::Peer)));
        evidence.http_client_ip = Some("203.0.113.5");
        assert_eq!(evidence.resolve(&trusted), Some((ip("203.0.113.5"), ClientSource::HttpClientIp)));
        evidence.client_address = Some("203.0.113.6:5000");
        assert_eq!(evidence.resolve(&trusted), Some((ip("203.0.113.6"), ClientSource::ClientAddress)));
        assert_eq!(ClientEvidence::default().resolve(&trusted), None);
    }

    #[test]
    fn long_lists_are_read_only_from_the_right() {
        let trusted = TrustedProxies::default();
        let long = vec!["10.0.0.1"; 10_000].join(", ");
        let list = format!("198.51.100.1, {long}");
        let mut evidence = behind("127.0.0.1");
        evidence.x_forwarded_for = lines(&[list.as_str()]);
        // The real client is beyond the hops looked at: the leftmost of those stands for it.
        assert_eq!(evidence.resolve(&trusted), Some((ip("10.0.0.1"), ClientSource::XForwardedFor)));
        // Five header lines: the last four are kept.
        let many = lines(&["198.51.100.1", "198.51.100.2", "10.0.0.2", "10.0.0.3", "10.0.0.4"]);
        let mut evidence = behind("127.0.0.1");
        evidence.x_forwarded_for = many;
        assert_eq!(evidence.resolve(&trusted), Some((ip("198.51.100.2"), ClientSource::XForwardedFor)));
    }
}
