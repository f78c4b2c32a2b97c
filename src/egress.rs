//! The egress policy: where outbound requests that a user can steer (LLM providers at a CUSTOM
//! endpoint, key tests, and the tools and webhooks to come) may go.
//!
//! - **No redirects.** The client that carries such requests follows none, so a server cannot
//!   bounce a request (and its key) to another host.
//! - **Checked addresses.** Host names are resolved by [`Resolver`](crate::egress::Resolver), which drops every address
//!   the policy forbids — loopback, private, link-local (cloud metadata lives there), CGNAT,
//!   multicast, unspecified, and IPv4 addresses hidden in IPv6 (mapped, NAT64) — and the
//!   connection is made to an address that passed, so a second DNS answer (rebinding) cannot
//!   switch it. Hosts written as IP addresses are checked with [`Egress::check_url`](crate::egress::Egress::check_url) before a
//!   request is made.
//! - **Operator allowlist.** `AGENTRY_EGRESS_ALLOW` lists CIDRs and host names that may be
//!   reached anyway (e.g. `127.0.0.1/32` for an Ollama beside the server). Development also
//!   allows loopback.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use url::Url;

/// What may be reached besides the public internet.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    /// Networks reachable even though they are not public.
    allowed_nets: Vec<IpNet>,
    /// Host names (lower case) whose addresses are not checked.
    allowed_hosts: Vec<String>,
    /// Loopback addresses are reachable (development).
    allow_loopback: bool,
}

impl Egress {
    /// The policy from `AGENTRY_EGRESS_ALLOW` entries (CIDRs, IP addresses or host names);
    /// `allow_loopback` in development.
    pub fn new(entries: &[String], allow_loopback: bool) -> Result<Self, String> {
        let mut policy = Self {
            allow_loopback,
            ..Self::default()
        };
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if let Ok(net) = entry.parse::<IpNet>() {
                policy.allowed_nets.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                policy.allowed_nets.push(IpNet::from(ip));
            } else if entry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                policy.allowed_hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "AGENTRY_EGRESS_ALLOW: `{entry}` is not a CIDR, an IP address or a host name"
                ));
            }
        }
        Ok(policy)
    }

    /// Allows the host of an operator-configured URL (a provider base URL pointing at an
    /// internal proxy must keep working); ignored when it does not parse.
    pub fn allow_host_of(&mut self, raw: &str) {
        match Url::parse(raw)
            .ok()
            .and_then(|url| url.host().map(|h| h.to_owned()))
        {
            Some(url::Host::Domain(name)) => self.allowed_hosts.push(name.to_ascii_lowercase()),
            Some(url::Host::Ipv4(ip)) => self.allowed_nets.push(IpNet::from(IpAddr::V4(ip))),
            Some(url::Host::Ipv6(ip)) => self.allowed_nets.push(IpNet::from(IpAddr::V6(ip))),
            None => {}
        }
    }

    /// Whether a connection to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.allowed_nets.iter().any(|net| net.contains(&ip)) {
            return true;
        }
        match classify(ip) {
            Reach::Public => true,
            Reach::Loopback => self.allow_loopback,
            Reach::Internal => false,
        }
    }

    /// Whether `host` is allowlisted by name.
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed_hosts.contains(&host)
    }

    /// Checks a URL before a request to it: its host, when written as an IP address, must be
    /// permitted (names are checked when they are resolved). The error is safe to show.
    pub fn check_url(&self, raw: &str) -> Result<(), String> {
        let url = Url::parse(raw).map_err(|_| "the endpoint is not a valid URL".to_owned())?;
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err("the endpoint has no host".to_owned()),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(refusal())
        }
    }

    /// The DNS resolver enforcing this policy, for a `reqwest` client.
    pub fn resolver(self: &Arc<Self>) -> Arc<Resolver> {
        Arc::new(Resolver(self.clone()))
    }
}

/// Why a destination was refused (no address or name in it: the text reaches users).
fn refusal() -> String {
    "the endpoint is on a private, loopback, link-local or otherwise internal network, which \
     this server does not reach (the operator can allow it with AGENTRY_EGRESS_ALLOW)"
        .to_owned()
}

/// Where an address leads.
#[derive(Debug, PartialEq, Eq)]
enum Reach {
    Public,
    Loopback,
    Internal,
}

fn classify(ip: IpAddr) -> Reach {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Reach {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Reach::Loopback
    } else if ip.is_private()
        || ip.is_link_local() // 169.254/16: cloud metadata services
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240
    // reserved
    {
        Reach::Internal
    } else {
        Reach::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> Reach {
    // IPv4 inside IPv6 goes where its IPv4 address goes.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let segments = ip.segments();
    if segments[0] == 0x64 && segments[1] == 0xff9b {
        // NAT64 (64:ff9b::/96 and the local-use 64:ff9b:1::/48)
        let [.., a, b, c, d] = ip.octets();
        return classify_v4(Ipv4Addr::new(a, b, c, d));
    }
    if ip.is_loopback() {
        Reach::Loopback
    } else if ip.is_unspecified()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || segments[..6] == [0, 0, 0, 0, 0, 0]
    // IPv4-compatible (deprecated)
    {
        Reach::Internal
    } else {
        Reach::Public
    }
}

/// A DNS resolver that keeps only the addresses the policy permits.
pub struct Resolver(Arc<Egress>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed_by_name = policy.host_allowed(&host);
            let permitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| allowed_by_name || policy.permits(addr.ip()))
                .collect();
            if permitted.is_empty() {
                return Err(refusal().into());
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_ranges_are_refused_and_public_ones_allowed() {
        let production = Egress::new(&[], false).unwrap();
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!production.permits(ip(internal)), "{internal}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(production.permits(ip(public)), "{public}");
        }
    }

    #[test]
    fn development_reaches_loopback_and_the_allowlist_opens_what_it_names() {
        let development = Egress::new(&[], true).unwrap();
        assert!(development.permits(ip("127.0.0.1")));
        assert!(development.permits(ip("::1")));
        assert!(!development.permits(ip("10.0.0.1")));
        let allowing = Egress::new(
            &[
                "10.0.0.0/8".into(),
                "192.168.1.7".into(),
                "ollama.internal".into(),
            ],
            false,
        )
        .unwrap();
        assert!(allowing.permits(ip("10.9.9.9")));
        assert!(allowing.permits(ip("192.168.1.7")));
        assert!(!allowing.permits(ip("192.168.1.8")));
        assert!(allowing.host_allowed("Ollama.Internal."));
        assert!(Egress::new(&["not a host!".into()], false).is_err());
    }

    #[test]
    fn urls_with_internal_ip_hosts_are_refused_before_any_request() {
        let production = Egress::new(&[], false).unwrap();
        assert!(
            production
                .check_url("http://169.254.169.254/latest")
                .is_err()
        );
        assert!(
            production
                .check_url("http://[::ffff:7f00:1]:8080/v1")
                .is_err()
        );
        assert!(production.check_url("https://api.example.com/v1").is_ok());
        assert!(production.check_url("https://8.8.8.8/v1").is_ok());
    }
}
