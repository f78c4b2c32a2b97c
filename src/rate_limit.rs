//! Rate limits (governor, in-process GCRA): per client, and stricter ones for sign-in.
//!
//! Every GraphQL operation spends one unit of its client's quota (a batch of ten spends ten).
//! Sign-in mutations (`login`, `register`, `refreshSession`) also spend from a per-IP and a
//! per-email quota inside the resolver, so aliases and batches cannot multiply attempts.
//! Keyed limiters remember every key until pruned: [`RateLimiters::prune`](crate::rate_limit::RateLimiters::prune) runs periodically.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
};
use http::HeaderMap;
use ipnet::IpNet;
use uuid::Uuid;

use crate::{
    config::Config,
    error::{AppError, AppResult},
};

/// Who a request is counted against: the signed-in user, else the client's IP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// A signed-in user (same quota on every device).
    User(Uuid),
    /// An anonymous client.
    Ip(IpAddr),
}

/// Where a client stands against its quota after a request that passed (sent to HTTP clients
/// as `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`, so they can pace
/// themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Operations the quota allows in a burst.
    pub limit: u32,
    /// Operations left right now.
    pub remaining: u32,
    /// Seconds until the quota is full again.
    pub reset_secs: u64,
}

/// The server's limiters; cheap to clone.
#[derive(Clone)]
pub struct RateLimiters {
    client: Arc<DefaultKeyedRateLimiter<ClientKey, StateInformationMiddleware>>,
    auth_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    auth_email: Arc<DefaultKeyedRateLimiter<String>>,
    /// IPv6 clients are counted per network of this prefix length.
    ipv6_prefix: u8,
}

/// The address a limit counts `ip` under: IPv4 as it is, IPv6 by its network of `ipv6_prefix`
/// bits (a client that holds a /64 can rotate through 2^64 addresses, so counting each one
/// alone would not limit it). IPv4-mapped IPv6 counts as its IPv4 address.
pub fn network_of(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ipnet::Ipv6Net::new(v6, ipv6_prefix.min(128))
                .map_or(ip, |net| IpAddr::V6(net.network())),
        },
    }
}

fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl RateLimiters {
    /// Limiters with the configured quotas.
    pub fn new(config: &Config) -> Self {
        let client = Quota::per_second(non_zero(config.rate_limit_per_second))
            .allow_burst(non_zero(config.rate_limit_burst));
        let auth = Quota::per_minute(non_zero(config.auth_rate_limit_per_minute));
        Self {
            client: Arc::new(
                RateLimiter::keyed(client).with_middleware::<StateInformationMiddleware>(),
            ),
            auth_ip: Arc::new(RateLimiter::keyed(auth)),
            auth_email: Arc::new(RateLimiter::keyed(auth)),
            ipv6_prefix: config.rate_limit_ipv6_prefix,
        }
    }

    /// Spends `operations` units of `key`'s quota and says what is left, or when to retry.
    pub fn check_client(&self, key: ClientKey, operations: usize) -> AppResult<Standing> {
        let key = match key {
            ClientKey::Ip(ip) => ClientKey::Ip(network_of(ip, self.ipv6_prefix)),
            user => user,
        };
        let n = non_zero(u32::try_from(operations).unwrap_or(u32::MAX));
        let result = match self.client.check_key_n(&key, n) {
            Ok(Ok(snapshot)) => {
                let quota = snapshot.quota();
                let limit = quota.burst_size().get();
                let remaining = snapshot.remaining_burst_capacity().min(limit);
                let refill = quota.replenish_interval() * (limit - remaining);
                Ok(Standing {
                    limit,
                    remaining,
                    reset_secs: refill.as_secs() + u64::from(refill.subsec_nanos() > 0),
                })
            }
            Ok(Err(not_until)) => Err(retry_after(
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
            // More operations than the burst could ever allow: retry after a full refill.
            Err(_) => Err(AppError::RateLimited {
                retry_after_secs: 60,
                reason: None,
            }),
        };
        if result.is_err() {
            metrics::counter!(crate::telemetry::names::RATE_LIMITED, "limiter" => "client")
                .increment(1);
        }
        result
    }

    /// Spends one sign-in attempt for `ip` and, when known, for `email` (already normalised).
    pub fn check_sign_in(&self, ip: IpAddr, email: Option<&str>) -> AppResult<()> {
        let now = DefaultClock::default().now();
        let refused = |limiter: &'static str| {
            metrics::counter!(crate::telemetry::names::RATE_LIMITED, "limiter" => limiter)
                .increment(1);
        };
        let ip = network_of(ip, self.ipv6_prefix);
        self.auth_ip.check_key(&ip).map_err(|not_until| {
            refused("sign_in_ip");
            retry_after(not_until.wait_time_from(now))
        })?;
        if let Some(email) = email {
            self.auth_email
                .check_key(&email.to_owned())
                .map_err(|not_until| {
                    refused("sign_in_email");
                    retry_after(not_until.wait_time_from(now))
                })?;
        }
        Ok(())
    }

    /// Forgets keys whose quota has fully refilled, and returns the memory.
    pub fn prune(&self) {
        self.client.retain_recent();
        self.client.shrink_to_fit();
        self.auth_ip.retain_recent();
        self.auth_ip.shrink_to_fit();
        self.auth_email.retain_recent();
        self.auth_email.shrink_to_fit();
    }

    /// How many keys the limiters hold (for tests and metrics).
    pub fn len(&self) -> usize {
        self.client.len() + self.auth_ip.len() + self.auth_email.len()
    }

    /// Whether the limiters hold no key at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Prunes every `period` until the process ends.
    pub fn spawn_pruner(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let limiters = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                limiters.prune();
            }
        })
    }
}

fn retry_after(wait: Duration) -> AppError {
    AppError::RateLimited {
        retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        reason: None,
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy. Untrusted peers cannot choose
/// their own rate-limit key.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| part.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(stranger, &headers, &trusted), stranger);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
    }

    #[test]
    fn ipv6_clients_count_per_network_and_ipv4_alone() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(network_of(a, 64), network_of(b, 64));
        assert_ne!(network_of(a, 64), network_of(elsewhere, 64));
        assert_ne!(network_of(a, 128), network_of(b, 128));
        let v4: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(network_of(v4, 64), v4);
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(network_of(mapped, 64), v4);
    }
}
