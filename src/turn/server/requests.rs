//! The TURN requests (RFC 8656 §7–§9, §11–§12): authentication first, then Allocate,
//! Refresh, CreatePermission and ChannelBind. Error responses after a successful
//! authentication carry MESSAGE-INTEGRITY(-SHA256) like the success responses.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::allocation::{Allocation, Bucket, Channel, Created, SmallMap};
use super::auth::{self, AuthError, Credential, MiKind};
use super::policy::QuotaError;
use super::{OpenError, Outcome, Relay, RelayPorts, ServerStats, Sock, TurnError};
use crate::stun::{
    AddressFamily, Attribute, Class, ErrorCode, Message, MessageType, MessageWriter, Method,
    StunError, attr,
};

/// What a request turned into.
pub(super) enum Handled {
    /// `n` bytes of answer written; `true` if it is an error response.
    Answer(usize, bool),
    /// No answer (dropped, or replay later).
    Other(Outcome),
}

type Sign<'c> = Option<(&'c Credential, MiKind)>;

fn respond(
    req: &Message<'_>,
    class: Class,
    out: &mut [u8],
    software: &str,
    sign: Sign<'_>,
    body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), StunError>,
) -> Result<usize, StunError> {
    let mut w = MessageWriter::new(
        out,
        MessageType::new(req.method(), class),
        req.transaction_id(),
    )?;
    body(&mut w)?;
    if !software.is_empty() {
        w.add_raw(attr::SOFTWARE, software.as_bytes())?;
    }
    match sign {
        Some((c, MiKind::Sha1)) => w.add_message_integrity(&c.key)?,
        Some((c, MiKind::Sha256)) => w.add_message_integrity_sha256(&c.key256)?,
        None => {}
    }
    w.add_fingerprint()?;
    Ok(w.finish())
}

fn answer(r: Result<usize, StunError>, is_error: bool) -> Handled {
    match r {
        Ok(n) => Handled::Answer(n, is_error),
        Err(_) => Handled::Other(Outcome::Drop(super::DropReason::NoRoom)),
    }
}

/// What a successful handler puts in its response.
enum Success {
    Allocate {
        relay: SocketAddr,
        mapped: SocketAddr,
        lifetime: u32,
        v6_refused: bool,
        token: Option<[u8; 8]>,
    },
    Refresh(u32),
    Empty,
}

impl Relay {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn request(
        &mut self,
        now: Instant,
        sock: Sock,
        source: SocketAddr,
        msg: &Message<'_>,
        out: &mut [u8],
        ports: &mut dyn RelayPorts,
        software: &str,
        stats: &mut ServerStats,
    ) -> Handled {
        let m = msg.method();
        if ![
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
        ]
        .contains(&m)
        {
            return answer(
                respond(msg, Class::Error, out, software, None, |w| {
                    w.add_error_code(&ErrorCode::BAD_REQUEST)
                }),
                true,
            );
        }
        let secs = self.secs(now);
        let minute = secs / 60;
        let limit = self.cfg.max_auth_failures;
        if limit != 0
            && let Some(&(mm, n)) = self.failures.get(&source.ip())
            && mm == minute
            && n >= limit
        {
            return Handled::Other(Outcome::Drop(super::DropReason::AuthRateLimited));
        }
        let alloc = self.allocs.by_client(sock, source);
        let cached = alloc.and_then(|id| self.allocs.get(id)).map(|a| &a.cred);
        let unix = self.cfg.unix_at_epoch + secs;
        let (cred, kind) = match self.auth.check(msg, source, secs, unix, cached) {
            Ok(ok) => ok,
            Err(e) => {
                let code = match e {
                    AuthError::BadRequest => {
                        return answer(
                            respond(msg, Class::Error, out, software, None, |w| {
                                w.add_error_code(&ErrorCode::BAD_REQUEST)
                            }),
                            true,
                        );
                    }
                    AuthError::StaleNonce => ErrorCode::STALE_NONCE,
                    AuthError::Challenge => ErrorCode::UNAUTHENTICATED,
                    AuthError::Rejected => {
                        stats.auth_failures += 1;
                        let entry = self.failures.entry(source.ip()).or_insert((minute, 0));
                        if entry.0 != minute {
                            *entry = (minute, 0);
                        }
                        entry.1 += 1;
                        ErrorCode::UNAUTHENTICATED
                    }
                };
                let nonce = self.auth.nonce(secs, source);
                let realm = self.auth.realm();
                return answer(
                    respond(msg, Class::Error, out, software, None, |w| {
                        w.add_error_code(&code)?;
                        w.add_raw(attr::REALM, realm.as_bytes())?;
                        w.add_raw(attr::NONCE, &nonce)?;
                        w.add_password_algorithms(&auth::ALGORITHMS)
                    }),
                    true,
                );
            }
        };
        let result = if m == Method::ALLOCATE {
            match alloc.and_then(|id| self.allocs.get(id)) {
                // A retransmission of the Allocate that created it: the same answer again
                // (RFC 8656 §7.2), with the lifetime that is left.
                Some(a)
                    if a.created.tid == *msg.transaction_id()
                        && a.cred.username == cred.username =>
                {
                    Ok(Success::Allocate {
                        relay: a.relay,
                        mapped: source,
                        lifetime: a.expires.saturating_duration_since(now).as_secs() as u32,
                        v6_refused: a.created.v6_refused,
                        token: a.created.token,
                    })
                }
                Some(_) => Err(TurnError::AllocationMismatch.into()),
                None => self.allocate(now, sock, source, msg, &cred, ports, stats),
            }
        } else {
            match alloc {
                None => Err(TurnError::AllocationMismatch.into()),
                Some(id) => {
                    let same_user = self
                        .allocs
                        .get(id)
                        .is_some_and(|a| a.cred.username == cred.username);
                    if !same_user {
                        Err(TurnError::WrongCredentials.into())
                    } else if m == Method::REFRESH {
                        self.refresh(now, id, msg, ports, stats)
                    } else if m == Method::CREATE_PERMISSION {
                        self.create_permission(now, id, msg)
                    } else {
                        self.channel_bind(now, id, msg)
                    }
                }
            }
        };
        let sign = Some((&cred, kind));
        match result {
            Ok(Success::Allocate {
                relay,
                mapped,
                lifetime,
                v6_refused,
                token,
            }) => answer(
                respond(msg, Class::Success, out, software, sign, |w| {
                    w.add_xor_address(attr::XOR_RELAYED_ADDRESS, relay)?;
                    if v6_refused {
                        w.add(&Attribute::AddressErrorCode(
                            AddressFamily::V6,
                            ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
                        ))?;
                    }
                    w.add_u32(attr::LIFETIME, lifetime)?;
                    if let Some(t) = token {
                        w.add_raw(attr::RESERVATION_TOKEN, &t)?;
                    }
                    w.add_xor_address(attr::XOR_MAPPED_ADDRESS, mapped)
                }),
                false,
            ),
            Ok(Success::Refresh(lifetime)) => answer(
                respond(msg, Class::Success, out, software, sign, |w| {
                    w.add_u32(attr::LIFETIME, lifetime)
                }),
                false,
            ),
            Ok(Success::Empty) => answer(
                respond(msg, Class::Success, out, software, sign, |_| Ok(())),
                false,
            ),
            Err(OutcomeOrError::Later) => Handled::Other(Outcome::Later),
            Err(OutcomeOrError::Error(e)) => answer(
                respond(msg, Class::Error, out, software, sign, |w| {
                    w.add_error_code(&e.code())
                }),
                true,
            ),
        }
    }

    fn lifetime(&self, requested: Option<u32>) -> u32 {
        let c = &self.cfg;
        requested
            .unwrap_or(c.default_lifetime)
            .clamp(c.default_lifetime, c.max_lifetime)
    }

    /// Opens a relay socket on an address of the family: starting from a rotating index
    /// (spreads allocations over the addresses) and trying the next address while a
    /// port range is exhausted. `None`: no address of that family.
    fn open_relay(
        &mut self,
        v6: bool,
        wish: super::PortWish,
        ports: &mut dyn RelayPorts,
        stats: &mut ServerStats,
    ) -> Option<Result<(Sock, SocketAddr), OutcomeOrError>> {
        let n = self.cfg.relay_ips.len();
        let start = self.relay_rr;
        let mut any = false;
        for k in 0..n {
            let ip = self.cfg.relay_ips[(start + k) % n];
            if ip.is_ipv6() != v6 {
                continue;
            }
            any = true;
            match ports.open(ip, wish) {
                Ok(x) => {
                    self.relay_rr = (start + k + 1) % n;
                    return Some(Ok(x));
                }
                Err(OpenError::Later) => return Some(Err(OutcomeOrError::Later)),
                Err(OpenError::Exhausted) => {}
            }
        }
        if !any {
            return None;
        }
        stats.relay_open_failures += 1;
        Some(Err(TurnError::InsufficientCapacity.into()))
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &mut self,
        now: Instant,
        sock: Sock,
        source: SocketAddr,
        msg: &Message<'_>,
        cred: &Credential,
        ports: &mut dyn RelayPorts,
        stats: &mut ServerStats,
    ) -> Result<Success, OutcomeOrError> {
        // RFC 8656 §7.2 step 2: REQUESTED-TRANSPORT, UDP only.
        match msg.get_decoded(attr::REQUESTED_TRANSPORT) {
            Some(Ok(Attribute::RequestedTransport(17))) => {}
            Some(Ok(Attribute::RequestedTransport(_))) => {
                return Err(TurnError::UnsupportedTransport.into());
            }
            _ => return Err(TurnError::BadRequest.into()),
        }
        let even = match msg.get_decoded(attr::EVEN_PORT) {
            None => None,
            Some(Ok(Attribute::EvenPort(reserve))) => Some(reserve),
            Some(_) => return Err(TurnError::BadRequest.into()),
        };
        let token = match msg.get_decoded(attr::RESERVATION_TOKEN) {
            None => None,
            Some(Ok(Attribute::ReservationToken(t))) => Some(*t),
            Some(_) => return Err(TurnError::BadRequest.into()),
        };
        // RFC 8656 §7.2: RESERVATION-TOKEN excludes EVEN-PORT and the family attributes.
        if token.is_some()
            && (even.is_some()
                || msg.get(attr::REQUESTED_ADDRESS_FAMILY).is_some()
                || msg.get(attr::ADDITIONAL_ADDRESS_FAMILY).is_some())
        {
            return Err(TurnError::BadRequest.into());
        }
        let requested = match msg.get_decoded(attr::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some(Ok(Attribute::RequestedAddressFamily(f))) => Some(f),
            Some(_) => return Err(TurnError::BadRequest.into()),
        };
        let additional = match msg.get_decoded(attr::ADDITIONAL_ADDRESS_FAMILY) {
            None => false,
            Some(Ok(Attribute::AdditionalAddressFamily(AddressFamily::V6))) => true,
            Some(_) => return Err(TurnError::BadRequest.into()),
        };
        if requested.is_some() && additional {
            return Err(TurnError::BadRequest.into());
        }
        let want_v6 = requested == Some(AddressFamily::V6);
        if !self.cfg.relay_ips.iter().any(|ip| ip.is_ipv6() == want_v6) {
            return Err(TurnError::AddressFamilyNotSupported.into());
        }
        // Dual allocations are not supported: an IPv4 relay is granted and the IPv6 part
        // refused with ADDRESS-ERROR-CODE 440 (RFC 8656 §7.2).
        let v6_refused = additional;
        let lifetime = self.lifetime(msg.lifetime());
        let mut new_token = None;
        let (relay_sock, relay) = if let Some(t) = token {
            // Peek first: a replay (Later) must find the token again.
            let Some(addr) = self.cfg.reservations.peek(&t, now) else {
                return Err(TurnError::InsufficientCapacity.into());
            };
            match ports.claim(addr) {
                Ok(x) => {
                    self.cfg.reservations.take(&t, now);
                    x
                }
                Err(OpenError::Later) => return Err(OutcomeOrError::Later),
                Err(OpenError::Exhausted) => {
                    stats.relay_open_failures += 1;
                    return Err(TurnError::InsufficientCapacity.into());
                }
            }
        } else {
            let wish = match even {
                None => super::PortWish::Any,
                Some(false) => super::PortWish::Even,
                Some(true) => super::PortWish::EvenReserveNext,
            };
            let (sock, addr) = match self.open_relay(want_v6, wish, ports, stats) {
                Some(r) => r?,
                None => return Err(TurnError::AddressFamilyNotSupported.into()),
            };
            if even == Some(true) {
                let c = self.tid_counter;
                self.tid_counter = c.wrapping_add(1);
                let mut t = c.to_be_bytes();
                for (b, k) in t.iter_mut().zip(self.cfg.nonce_secret.iter().skip(8)) {
                    *b ^= k;
                }
                let next = SocketAddr::new(addr.ip(), addr.port() + 1);
                self.cfg
                    .reservations
                    .insert(t, next, now + Duration::from_secs(30));
                new_token = Some(t);
            }
            (sock, addr)
        };
        if let Err(e) =
            self.cfg
                .quotas
                .acquire(&cred.username, self.cfg.user_quota, self.cfg.total_quota)
        {
            ports.end_relay(relay_sock, relay);
            if let Some(t) = new_token
                && let Some(next) = self.cfg.reservations.take(&t, now)
            {
                ports.release(next);
            }
            return Err(match e {
                QuotaError::User => TurnError::QuotaReached,
                QuotaError::Total => TurnError::InsufficientCapacity,
            }
            .into());
        }
        let expires = now + Duration::from_secs(lifetime.into());
        let id = self.allocs.insert(Allocation {
            client_sock: sock,
            client: source,
            relay_sock,
            relay,
            shared: ports.shared(),
            expires,
            wake: u32::MAX,
            cred: cred.clone(),
            perms: SmallMap::new(),
            channels: SmallMap::new(),
            peer_channels: SmallMap::new(),
            bucket: Bucket::new(self.cfg.bandwidth),
            counters: Default::default(),
            created: Created {
                tid: *msg.transaction_id(),
                v6_refused,
                token: new_token,
            },
        });
        self.wake(id, expires, now);
        stats.allocations_created += 1;
        Ok(Success::Allocate {
            relay,
            mapped: source,
            lifetime,
            v6_refused,
            token: new_token,
        })
    }

    fn refresh(
        &mut self,
        now: Instant,
        id: super::allocation::AllocId,
        msg: &Message<'_>,
        ports: &mut dyn RelayPorts,
        stats: &mut ServerStats,
    ) -> Result<Success, OutcomeOrError> {
        let Some(a) = self.allocs.get(id) else {
            return Err(TurnError::AllocationMismatch.into());
        };
        if let Some(Ok(Attribute::RequestedAddressFamily(f))) =
            msg.get_decoded(attr::REQUESTED_ADDRESS_FAMILY)
            && (f == AddressFamily::V6) != a.relay.is_ipv6()
        {
            return Err(TurnError::PeerAddressFamilyMismatch.into());
        }
        if msg.lifetime() == Some(0) {
            self.end_allocation(id, ports, stats);
            return Ok(Success::Refresh(0));
        }
        let lifetime = self.lifetime(msg.lifetime());
        let expires = now + Duration::from_secs(lifetime.into());
        if let Some(a) = self.allocs.get_mut(id) {
            a.expires = expires;
        }
        // A shorter lifetime moves the deadline earlier (a longer one is found when the
        // current entry fires).
        self.wake(id, expires, now);
        Ok(Success::Refresh(lifetime))
    }

    /// Checks a peer address for this allocation: family, then policy.
    fn check_peer(&self, relay: SocketAddr, peer: SocketAddr) -> Result<(), TurnError> {
        if peer.is_ipv4() != relay.is_ipv4() {
            return Err(TurnError::PeerAddressFamilyMismatch);
        }
        if !self.cfg.policy.permits(peer.ip()) {
            return Err(TurnError::Forbidden);
        }
        Ok(())
    }

    fn create_permission(
        &mut self,
        now: Instant,
        id: super::allocation::AllocId,
        msg: &Message<'_>,
    ) -> Result<Success, OutcomeOrError> {
        let Some(relay) = self.allocs.get(id).map(|a| a.relay) else {
            return Err(TurnError::AllocationMismatch.into());
        };
        let mut any = false;
        // All-or-nothing: check every address before installing any.
        for peer in msg.xor_addresses(attr::XOR_PEER_ADDRESS) {
            let peer = peer.map_err(|_| TurnError::BadRequest)?;
            self.check_peer(relay, peer)?;
            any = true;
        }
        if !any {
            return Err(TurnError::BadRequest.into());
        }
        let until = now + Duration::from_secs(self.cfg.permission_lifetime.into());
        let a = self.allocs.get_mut(id).expect("checked above");
        for peer in msg.xor_addresses(attr::XOR_PEER_ADDRESS).flatten() {
            a.permit(peer.ip(), until);
        }
        self.wake(id, until, now);
        Ok(Success::Empty)
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        id: super::allocation::AllocId,
        msg: &Message<'_>,
    ) -> Result<Success, OutcomeOrError> {
        let Some(relay) = self.allocs.get(id).map(|a| a.relay) else {
            return Err(TurnError::AllocationMismatch.into());
        };
        let Some(ch) = msg.channel_number() else {
            return Err(TurnError::BadRequest.into());
        };
        if !super::relay::is_legacy_channel(ch) {
            return Err(TurnError::BadRequest.into());
        }
        let Some(Ok(peer)) = msg.xor_address(attr::XOR_PEER_ADDRESS) else {
            return Err(TurnError::BadRequest.into());
        };
        self.check_peer(relay, peer)?;
        let ch_until = now + Duration::from_secs(self.cfg.channel_lifetime.into());
        let perm_until = now + Duration::from_secs(self.cfg.permission_lifetime.into());
        let a = self.allocs.get_mut(id).expect("checked above");
        // RFC 8656 §12.2: the number must not be bound to another peer, nor the peer to
        // another number, also while an expired binding cools down (§12).
        if a.channels.get(&ch).is_some_and(|c| c.peer != peer)
            || a.peer_channels.get(&peer).is_some_and(|&n| n != ch)
        {
            return Err(TurnError::BadRequest.into());
        }
        a.channels.insert(
            ch,
            Channel {
                peer,
                expires: ch_until,
            },
        );
        a.peer_channels.insert(peer, ch);
        a.permit(peer.ip(), perm_until);
        let cooled = ch_until + super::allocation::CHANNEL_COOLDOWN;
        self.wake(id, perm_until.min(cooled), now);
        Ok(Success::Empty)
    }
}

/// A handler's failure: an error response, or "replay later".
enum OutcomeOrError {
    Later,
    Error(TurnError),
}

impl From<TurnError> for OutcomeOrError {
    fn from(e: TurnError) -> Self {
        OutcomeOrError::Error(e)
    }
}
