//! The ICE agent state machine (RFC 8445 §6–§9, §11; RFC 8838 trickle; RFC 7675 consent).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::candidate::{Candidate, CandidateKind, is_ice_char, local_preference, priority};
use super::checklist::CheckList;
use super::config::{IceConfig, Settings};
use super::pair::{Pair, PairState, Purpose, Transaction, pair_priority};
use super::rng::Rng;
use super::stun::{CheckParams, write_error, write_request, write_success};
use super::{ConnectionState, Handled, IceError, IceEvent};
use crate::net::{Protocol, Received, Transmit};
use crate::stun::{Class, IntegrityKey, Message, Method, TransactionId, attr};

/// Send-queue capacity kept once connected (see `select`).
const STEADY_PENDING: usize = 2;

/// No NOMINATION attribute came with USE-CANDIDATE.
const NO_NOMINATION: u32 = u32::MAX;

/// At most this many types are listed in a 420's UNKNOWN-ATTRIBUTES.
const MAX_UNKNOWN: usize = 4;

/// Generated credentials (RFC 8445 §5.3: at least 24 bits and 128 bits of randomness).
const UFRAG_LEN: usize = 8;
const PWD_LEN: usize = 24;

/// A ufrag/pwd pair (RFC 8445 §5.3) and the HMAC key of the pwd.
#[derive(Debug, Clone)]
struct Credentials {
    /// The ufrag followed by the pwd: one allocation for both.
    text: Box<str>,
    /// Length of the ufrag in `text` (at most 256).
    ufrag_len: u16,
    key: IntegrityKey,
}

impl Credentials {
    fn new(ufrag: &str, pwd: &str) -> Result<Self, IceError> {
        let ok = |s: &str, min: usize| (min..=256).contains(&s.len()) && s.bytes().all(is_ice_char);
        if !ok(ufrag, 4) {
            return Err(IceError::BadCredentials("ufrag must be 4..=256 ice-chars"));
        }
        if !ok(pwd, 22) {
            return Err(IceError::BadCredentials("pwd must be 22..=256 ice-chars"));
        }
        let key = IntegrityKey::new(pwd.as_bytes());
        let mut text = String::with_capacity(ufrag.len() + pwd.len());
        text.push_str(ufrag);
        text.push_str(pwd);
        Ok(Credentials {
            text: text.into_boxed_str(),
            ufrag_len: ufrag.len() as u16,
            key,
        })
    }

    /// Local credentials: `ufrag` and `pwd` as given, or drawn from `rng` (ufrag first)
    /// into stack buffers, so the only allocation is the one `new` makes.
    fn local(rng: &mut Rng, ufrag: Option<String>, pwd: Option<String>) -> Result<Self, IceError> {
        let (mut u, mut p) = ([0u8; UFRAG_LEN], [0u8; PWD_LEN]);
        let ufrag = match &ufrag {
            Some(s) => s.as_str(),
            None => rng.ice_chars(&mut u),
        };
        let pwd = match &pwd {
            Some(s) => s.as_str(),
            None => rng.ice_chars(&mut p),
        };
        Credentials::new(ufrag, pwd)
    }

    fn ufrag(&self) -> &str {
        self.text.get(..usize::from(self.ufrag_len)).unwrap_or("")
    }

    fn pwd(&self) -> &str {
        self.text.get(usize::from(self.ufrag_len)..).unwrap_or("")
    }
}

/// The selected path. Its addresses are not copied here: they are the pair's local base
/// and remote address, read through the pair index (stable while selected: pairs are only
/// appended until the check list is cleared, and candidates are only appended until the
/// remote side is cleared, which unhooks the selection first).
#[derive(Debug, Clone, Copy)]
struct Selected {
    /// `None` after an ICE restart (RFC 8445 §9): the old path, its addresses kept in
    /// [`Rare::unchecked`], still carries data, unchecked.
    pair: Option<u16>,
    last_activity: Instant,
    last_consent: Instant,
    next_keepalive: Instant,
}

/// State few agents ever hold, boxed so that every other agent pays one pointer.
#[derive(Debug, Default)]
struct Rare {
    /// Bases of local candidates removed by
    /// [`remove_local_candidates`](IceAgent::remove_local_candidates): they pair no more.
    gone: Vec<SocketAddr>,
    /// After an ICE restart, the old selected path `(local base, remote address)` while
    /// `Selected::pair` is `None`.
    unchecked: Option<(SocketAddr, SocketAddr)>,
    /// Not Failed before this instant, though nothing is left to check (see [`PAC_WAIT`]).
    pac_until: Option<Instant>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.gone.is_empty() && self.unchecked.is_none() && self.pac_until.is_none()
    }
}

/// How long an agent waits for the peer's checks once it has nothing left to check and
/// both sides signalled end-of-candidates, before it reports Failed: 39.5 s, the PAC
/// timer of ICE PAC (draft-ietf-ice-pac, "Patiently Awaiting Connectivity"; RFC 8445
/// would fail at once). The peer may still reach it through a peer-reflexive candidate:
/// a browser's host candidates hidden behind mDNS names, which this agent does not
/// resolve, leave the check list empty, and the browser's checks form the pair. Counted
/// from the moment nothing was left to check, which is never earlier than PAC's start.
pub const PAC_WAIT: Duration = Duration::from_millis(39_500);

#[derive(Debug, Clone, Copy)]
enum Pending {
    Check {
        pair: u16,
        tid: TransactionId,
    },
    Response {
        tid: TransactionId,
        local: SocketAddr,
        remote: SocketAddr,
        /// 0 for success, else the error code.
        code: u16,
        /// 420: the unknown comprehension-required attribute types (0 = unused slot).
        unknown: [u16; MAX_UNKNOWN],
    },
}

/// A sans-IO ICE agent for one data stream (RFC 8445), components 1 and 2.
///
/// See the [module documentation](super) for the drive loop and an example.
#[derive(Debug)]
pub struct IceAgent {
    cfg: Settings,
    rng: Rng,
    controlling: bool,
    tie_breaker: u64,
    local: Credentials,
    remote: Option<Credentials>,
    locals: Vec<Candidate>,
    remotes: Vec<Candidate>,
    checklist: CheckList,
    pending: VecDeque<Pending>,
    events: VecDeque<IceEvent>,
    state: ConnectionState,
    selected: Option<Selected>,
    /// Controlling: the pair whose nomination check is in flight.
    nominating: Option<u16>,
    /// Controlling: last NOMINATION value sent.
    nomination_sent: u32,
    /// Controlled: highest NOMINATION value accepted.
    nomination_seen: u32,
    first_valid_at: Option<Instant>,
    /// Earliest instant of the next paced check (Ta).
    next_check_at: Option<Instant>,
    last_now: Option<Instant>,
    local_end: bool,
    remote_end: bool,
    /// Removed interfaces and a restart's unchecked path (`None` for most agents).
    rare: Option<Box<Rare>>,
}

impl IceAgent {
    /// A new agent. Credentials missing from `config` are generated from its seed.
    pub fn new(mut config: IceConfig) -> Result<Self, IceError> {
        let mut rng = Rng::new(config.seed);
        // Taken, not cloned: the credentials live once, in `local`.
        let local =
            Credentials::local(&mut rng, config.local_ufrag.take(), config.local_pwd.take())?;
        let tie_breaker = rng.next_u64();
        Ok(IceAgent {
            controlling: config.controlling && !config.lite,
            cfg: Settings::from(&config),
            rng,
            tie_breaker,
            local,
            remote: None,
            locals: Vec::new(),
            remotes: Vec::new(),
            checklist: CheckList::default(),
            pending: VecDeque::new(),
            events: VecDeque::new(),
            state: ConnectionState::New,
            selected: None,
            nominating: None,
            nomination_sent: 0,
            nomination_seen: 0,
            first_valid_at: None,
            next_check_at: None,
            last_now: None,
            local_end: false,
            remote_end: false,
            rare: None,
        })
    }

    // ------------------------------------------------------------------ accessors

    /// Local `(ufrag, pwd)` to signal to the peer.
    pub fn local_credentials(&self) -> (&str, &str) {
        (self.local.ufrag(), self.local.pwd())
    }

    /// Remote `(ufrag, pwd)`, once set.
    pub fn remote_credentials(&self) -> Option<(&str, &str)> {
        self.remote.as_ref().map(|c| (c.ufrag(), c.pwd()))
    }

    /// Whether the agent is currently controlling.
    pub fn is_controlling(&self) -> bool {
        self.controlling
    }

    /// Whether this is an ICE-lite agent.
    pub fn is_lite(&self) -> bool {
        self.cfg.lite
    }

    /// The tie-breaker used in role conflicts (§7.3.1.1).
    pub fn tie_breaker(&self) -> u64 {
        self.tie_breaker
    }

    /// Current connection state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// Local candidates (including peer-reflexive ones learnt from checks).
    pub fn local_candidates(&self) -> &[Candidate] {
        &self.locals
    }

    /// Gathering has ended ([`end_of_local_candidates`](Self::end_of_local_candidates)).
    pub fn gathering_complete(&self) -> bool {
        self.local_end
    }

    /// The local candidates to signal: host, server-reflexive and relayed ones whose
    /// interface is still there (what [`restart`](Self::restart) announces again).
    pub fn signalled_candidates(&self) -> impl Iterator<Item = &Candidate> {
        self.locals
            .iter()
            .filter(|c| c.kind != CandidateKind::PeerReflexive && !self.is_gone(c.base))
    }

    /// `base` was removed ([`remove_local_candidates`](Self::remove_local_candidates)).
    fn is_gone(&self, base: SocketAddr) -> bool {
        self.rare.as_ref().is_some_and(|r| r.gone.contains(&base))
    }

    /// Remote candidates (including peer-reflexive ones learnt from checks).
    pub fn remote_candidates(&self) -> &[Candidate] {
        &self.remotes
    }

    /// The selected pair as `(local base, remote address)`: send application data from the
    /// first to the second.
    pub fn selected_pair(&self) -> Option<(SocketAddr, SocketAddr)> {
        let s = self.selected.as_ref()?;
        match s.pair {
            Some(i) => self.pair_path(usize::from(i)),
            None => self.rare.as_ref()?.unchecked,
        }
    }

    /// Pair `i`'s `(local base, remote address)`: three indexed reads (the pair, its two candidates), no search.
    #[inline]
    fn pair_path(&self, i: usize) -> Option<(SocketAddr, SocketAddr)> {
        let p = self.checklist.pairs.get(i)?;
        let local = self.locals.get(usize::from(p.local))?.base;
        Some((local, self.remotes.get(usize::from(p.remote))?.addr))
    }

    /// Unselects (the pair failed, its interface went, the agent closed).
    fn unselect(&mut self) {
        self.selected = None;
        self.drop_unchecked();
    }

    /// Forgets a restart's unchecked path and the PAC deadline (a pair was selected, or
    /// the selection ended).
    fn drop_unchecked(&mut self) {
        self.shed_rare(|r| {
            r.unchecked = None;
            r.pac_until = None;
        });
    }

    /// Changes the rare state, if any; the box goes when it holds nothing any more.
    fn shed_rare(&mut self, f: impl FnOnce(&mut Rare)) {
        if let Some(r) = &mut self.rare {
            f(r);
            if r.is_empty() {
                self.rare = None;
            }
        }
    }

    /// The selected pair's local and remote candidates. The local one is the valid pair's
    /// (RFC 8445 §7.2.5.3.2): the local candidate at the mapped address our last check on
    /// the pair learnt — the srflx candidate when the check left through a NAT that mapped
    /// it there, a peer-reflexive one when the mapping was unknown — or, before any of our
    /// checks on it succeeded, the paired candidate (a srflx candidate pairs as its base,
    /// §6.1.2.4).
    pub fn selected_candidates(&self) -> Option<(&Candidate, &Candidate)> {
        let p = self
            .checklist
            .pairs
            .get(usize::from(self.selected?.pair?))?;
        let local = self
            .locals
            .get(usize::from(p.valid_local))
            .or_else(|| self.locals.get(usize::from(p.local)))?;
        Some((local, self.remotes.get(usize::from(p.remote))?))
    }

    /// Round-trip time last measured on the selected pair.
    pub fn selected_rtt(&self) -> Option<Duration> {
        let i = self.selected?.pair?;
        self.checklist.pairs.get(usize::from(i))?.rtt
    }

    /// Number of candidate pairs in the check list.
    pub fn pair_count(&self) -> usize {
        self.checklist.pairs.len()
    }

    /// The check list as (local base, remote address, state), for diagnostics.
    pub fn pairs(&self) -> impl Iterator<Item = (SocketAddr, SocketAddr, PairState)> + '_ {
        self.checklist.pairs.iter().filter_map(|p| {
            let local = self.locals.get(usize::from(p.local))?.base;
            Some((
                local,
                self.remotes.get(usize::from(p.remote))?.addr,
                p.state,
            ))
        })
    }

    /// Bytes this agent holds on the heap (capacities, not lengths), for capacity planning.
    pub fn heap_size(&self) -> usize {
        use std::mem::size_of;
        let cand = |c: &Candidate| {
            let Some(e) = &c.extensions else {
                return 0;
            };
            size_of::<super::candidate::Extensions>()
                + e.ufrag.as_ref().map_or(0, |u| u.len())
                + e.other.capacity() * size_of::<(Box<str>, Box<str>)>()
                + e.other
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
        };
        self.local.text.len()
            + self.remote.as_ref().map_or(0, |r| r.text.len())
            + self.locals.capacity() * size_of::<Candidate>()
            + self.locals.iter().map(cand).sum::<usize>()
            + self.remotes.capacity() * size_of::<Candidate>()
            + self.remotes.iter().map(cand).sum::<usize>()
            + self.checklist.pairs.capacity() * size_of::<Pair>()
            + self.checklist.triggered.capacity() * size_of::<u16>()
            + self.pending.capacity() * size_of::<Pending>()
            + self.events.capacity() * size_of::<IceEvent>()
            + self.rare.as_ref().map_or(0, |r| {
                size_of::<Rare>() + r.gone.capacity() * size_of::<SocketAddr>()
            })
    }

    // ------------------------------------------------------------------ signalling

    /// Sets (or replaces) the peer's credentials. Candidates may arrive before them; checks
    /// wait. New credentials different from the previous ones mean the peer restarted: the
    /// remote candidates and pairs are dropped (the selected path keeps carrying data).
    pub fn set_remote_credentials(&mut self, ufrag: &str, pwd: &str) -> Result<(), IceError> {
        if let Some(r) = &self.remote {
            if r.ufrag() == ufrag && r.pwd() == pwd {
                return Ok(());
            }
            self.clear_remote_side();
        }
        self.remote = Some(Credentials::new(ufrag, pwd)?);
        Ok(())
    }

    /// Tells the agent the peer is ICE-lite (RFC 8445 §6.1.1): a full agent is then
    /// always controlling.
    pub fn set_remote_lite(&mut self, lite: bool) {
        if lite && !self.cfg.lite && !self.controlling {
            self.switch_role(true);
        }
    }

    /// Switches role explicitly (before checks start).
    pub fn set_controlling(&mut self, controlling: bool) {
        if self.controlling != controlling && !self.cfg.lite {
            self.switch_role(controlling);
        }
    }

    /// Adds a local candidate (trickle: at any time). The agent assigns its priority
    /// (RFC 8445 §5.1.2: type preference, then a local preference that ranks IPv6 above
    /// IPv4 and interfaces in the order their first candidate was added) and emits
    /// [`IceEvent::LocalCandidate`] to signal.
    pub fn add_local_candidate(&mut self, mut c: Candidate) -> Result<(), IceError> {
        if c.protocol != Protocol::Udp {
            return Err(IceError::Unsupported("only UDP candidates are checked"));
        }
        if !(1..=2).contains(&c.component) {
            return Err(IceError::Unsupported("components 1 and 2 only"));
        }
        if self
            .locals
            .iter()
            .any(|l| l.addr == c.addr && l.kind == c.kind && l.component == c.component)
        {
            return Ok(());
        }
        if self.locals.len() >= usize::from(self.cfg.max_candidates) {
            return Err(IceError::Limit("local candidates"));
        }
        if c.kind != CandidateKind::PeerReflexive {
            let base_ip = c.base.ip();
            let mut seen: Vec<std::net::IpAddr> = Vec::new();
            for l in &self.locals {
                let ip = l.base.ip();
                if ip.is_ipv4() == base_ip.is_ipv4() && ip != base_ip && !seen.contains(&ip) {
                    seen.push(ip);
                }
            }
            let lp = local_preference(base_ip, seen.len() as u16);
            c.priority = priority(c.kind, lp, c.component);
        }
        self.locals.reserve_exact(1);
        self.locals.push(c.clone());
        let li = self.locals.len() - 1;
        self.events.push_back(IceEvent::LocalCandidate(c));
        for ri in 0..self.remotes.len() {
            self.form_pair(li, ri);
        }
        Ok(())
    }

    /// No more local candidates: emits [`IceEvent::GatheringComplete`] (pion's
    /// `OnCandidate(nil)`).
    pub fn end_of_local_candidates(&mut self) {
        if !self.local_end {
            self.local_end = true;
            self.events.push_back(IceEvent::GatheringComplete);
        }
    }

    /// An interface address is gone (continual gathering): the local candidates whose base
    /// is `base` stop being used. Their pairs fail, with their transactions and queued
    /// checks and answers. If the selected pair was one of them the state is
    /// [`ConnectionState::Disconnected`] until another pair is selected: the controlling
    /// agent nominates the best remaining valid pair, the controlled agent follows the
    /// peer's next nomination. Moving to another pair after a nomination is renomination
    /// (§8.1.1 allows one nomination per session), so both sides need
    /// [`IceConfig::renomination`] for the move. The candidates stay in
    /// [`local_candidates`](Self::local_candidates) (trickle cannot withdraw a signalled
    /// candidate) but form no new pairs. Returns how many candidates had that base.
    pub fn remove_local_candidates(&mut self, base: SocketAddr) -> usize {
        let gone: Vec<usize> = (0..self.locals.len())
            .filter(|&i| self.locals[i].base == base)
            .collect();
        if gone.is_empty() {
            return 0;
        }
        let rare = self.rare.get_or_insert_with(Box::default);
        if !rare.gone.contains(&base) {
            rare.gone.reserve_exact(1);
            rare.gone.push(base);
        }
        let on_gone = |p: &Pair| gone.contains(&usize::from(p.local));
        let mut failed: Vec<u16> = Vec::new();
        for (i, p) in self.checklist.pairs.iter_mut().enumerate() {
            if on_gone(p) {
                p.state = PairState::Failed;
                p.txn = None;
                p.nominate_on_success = None;
                failed.push(i as u16);
            }
        }
        self.checklist.triggered.retain(|i| !failed.contains(i));
        self.pending.retain(|q| match q {
            Pending::Check { pair, .. } => !failed.contains(pair),
            Pending::Response { local, .. } => *local != base,
        });
        if self.nominating.is_some_and(|n| failed.contains(&n)) {
            self.nominating = None;
        }
        if self.selected_pair().is_some_and(|(local, _)| local == base) {
            self.unselect();
            self.set_state(ConnectionState::Disconnected);
        }
        gone.len()
    }

    /// Adds a remote candidate (trickle: at any time, also before credentials). Non-UDP
    /// candidates are accepted and ignored. A candidate that was known as peer-reflexive is
    /// upgraded in place.
    pub fn add_remote_candidate(&mut self, c: Candidate) -> Result<(), IceError> {
        if c.protocol != Protocol::Udp || !(1..=2).contains(&c.component) {
            return Ok(());
        }
        if let Some(ri) = self
            .remotes
            .iter()
            .position(|r| r.addr == c.addr && r.component == c.component)
        {
            let r = &mut self.remotes[ri];
            if r.kind == CandidateKind::PeerReflexive && c.kind != CandidateKind::PeerReflexive {
                r.kind = c.kind;
                r.foundation = c.foundation;
                r.priority = c.priority;
                r.related = c.related;
                self.recompute_priorities();
            }
            return Ok(());
        }
        if self.remotes.len() >= usize::from(self.cfg.max_candidates) {
            return Err(IceError::Limit("remote candidates"));
        }
        let mut c = c;
        c.base = c.addr;
        self.remotes.reserve_exact(1);
        self.remotes.push(c);
        let ri = self.remotes.len() - 1;
        for li in 0..self.locals.len() {
            self.form_pair(li, ri);
        }
        Ok(())
    }

    /// The peer signalled end-of-candidates (RFC 8838 §13): once every pair failed (and
    /// this agent's own gathering ended), the agent waits [`PAC_WAIT`] (39.5 s) more for
    /// the peer's checks, then reports [`ConnectionState::Failed`].
    pub fn end_of_remote_candidates(&mut self) {
        self.remote_end = true;
    }

    /// ICE restart (RFC 8445 §9): new local credentials (generated when `None`); the
    /// peer's credentials and candidates, the check list and the nomination counts start
    /// again (the role stays). Host, server-reflexive and relayed local candidates are kept
    /// and announced again, since the peer forgets them with the old credentials: an
    /// [`IceEvent::LocalCandidate`] each (not those of removed interfaces), then
    /// [`IceEvent::GatheringComplete`] if gathering had ended (else when it ends). The
    /// state turns Checking (New stays New); the old selected pair keeps carrying data
    /// until a new pair is selected. [`IceError::Closed`] on a closed agent.
    pub fn restart(&mut self, ufrag: Option<String>, pwd: Option<String>) -> Result<(), IceError> {
        if self.state == ConnectionState::Closed {
            return Err(IceError::Closed);
        }
        self.local = Credentials::local(&mut self.rng, ufrag, pwd)?;
        self.remote = None;
        self.clear_remote_side();
        self.locals
            .retain(|l| l.kind != CandidateKind::PeerReflexive);
        let again: Vec<IceEvent> = self
            .signalled_candidates()
            .map(|c| IceEvent::LocalCandidate(c.clone()))
            .collect();
        self.events.extend(again);
        if self.local_end {
            self.events.push_back(IceEvent::GatheringComplete);
        }
        // Nothing could check yet (no peer credentials before, none now): still New.
        if self.state != ConnectionState::New {
            self.set_state(ConnectionState::Checking);
        }
        Ok(())
    }

    /// Stops the agent: nothing more is sent, everything received is dropped.
    pub fn close(&mut self) {
        self.pending.clear();
        self.checklist.clear();
        self.unselect();
        self.set_state(ConnectionState::Closed);
    }

    fn clear_remote_side(&mut self) {
        // The selected path outlives its pair: keep its addresses before the pair goes.
        if let Some(i) = self.selected.and_then(|s| s.pair) {
            match self.pair_path(usize::from(i)) {
                Some(path) => {
                    self.rare.get_or_insert_with(Box::default).unchecked = Some(path);
                }
                None => {
                    // Pairs and candidates only grow until cleared: a selected index
                    // always resolves.
                    debug_assert!(false, "selected pair {i} has no path");
                    self.unselect();
                }
            }
        }
        self.remotes.clear();
        self.checklist.clear();
        self.pending.clear();
        self.nominating = None;
        self.first_valid_at = None;
        self.remote_end = false;
        // §9: everything but the roles starts again; a peer that restarted counts its
        // renominations (and paces its checks) from the start too.
        self.nomination_sent = 0;
        self.nomination_seen = 0;
        self.next_check_at = None;
        self.shed_rare(|r| r.pac_until = None);
        if let Some(s) = &mut self.selected {
            s.pair = None;
        }
    }

    // ------------------------------------------------------------------ pairing

    /// §6.1.2.4: a server-reflexive local candidate is replaced by its base, so it pairs
    /// only when no host candidate with that base exists; peer-reflexive ones never pair.
    fn pairs_as_itself(&self, li: usize) -> bool {
        let l = &self.locals[li];
        match l.kind {
            CandidateKind::Host | CandidateKind::Relayed => true,
            CandidateKind::PeerReflexive => false,
            CandidateKind::ServerReflexive => !self.locals.iter().any(|h| {
                h.kind == CandidateKind::Host && h.addr == l.base && h.component == l.component
            }),
        }
    }

    fn priority_of(&self, li: usize, ri: usize) -> u64 {
        let (l, r) = (self.locals[li].priority, self.remotes[ri].priority);
        if self.controlling {
            pair_priority(l, r)
        } else {
            pair_priority(r, l)
        }
    }

    fn form_pair(&mut self, li: usize, ri: usize) -> Option<usize> {
        let (l, r) = (&self.locals[li], &self.remotes[ri]);
        if l.component != r.component
            || l.addr.is_ipv4() != r.addr.is_ipv4()
            || self.is_gone(l.base)
        {
            return None;
        }
        if !self.pairs_as_itself(li) {
            return None;
        }
        let foundation = (u64::from(fnv(l.foundation.as_bytes())) << 32)
            | u64::from(fnv(r.foundation.as_bytes()));
        let prio = self.priority_of(li, ri);
        let pair = Pair::new(li as u16, ri as u16, prio, foundation);
        let i = self.checklist.add(pair, usize::from(self.cfg.max_pairs))?;
        if self.remote.is_some() && self.state == ConnectionState::New && !self.cfg.lite {
            self.set_state(ConnectionState::Checking);
        }
        Some(i)
    }

    fn recompute_priorities(&mut self) {
        for i in 0..self.checklist.pairs.len() {
            let (li, ri) = {
                let p = &self.checklist.pairs[i];
                (usize::from(p.local), usize::from(p.remote))
            };
            self.checklist.pairs[i].priority = self.priority_of(li, ri);
        }
    }

    fn switch_role(&mut self, controlling: bool) {
        self.controlling = controlling;
        self.nominating = None;
        self.recompute_priorities();
        self.events.push_back(IceEvent::RoleChanged { controlling });
    }

    /// The local candidate a datagram arriving on `addr` belongs to (the pairing one).
    fn local_index(&self, addr: SocketAddr, component: Option<u16>) -> Option<usize> {
        let ok = |l: &Candidate| component.is_none_or(|c| l.component == c);
        self.locals
            .iter()
            .position(|l| {
                l.addr == addr
                    && ok(l)
                    && matches!(l.kind, CandidateKind::Host | CandidateKind::Relayed)
            })
            .or_else(|| self.locals.iter().position(|l| l.base == addr && ok(l)))
    }

    fn remote_index(&self, addr: SocketAddr) -> Option<usize> {
        self.remotes.iter().position(|r| r.addr == addr)
    }

    // ------------------------------------------------------------------ drive loop

    /// Feeds a received datagram. STUN is consumed; other datagrams are classified
    /// [`Handled::Data`] only when they arrive on a 5-tuple that passed an authenticated
    /// check (or the selected pair), so the runtime may deliver them. Never panics on any
    /// input.
    pub fn handle_packet(&mut self, now: Instant, pkt: Received<'_>) -> Handled {
        self.last_now = Some(now);
        if self.state == ConnectionState::Closed {
            return Handled::Dropped;
        }
        let first = pkt.contents.first().copied().unwrap_or(0xFF);
        if first < 4 {
            let handled = match Message::parse(pkt.contents) {
                Ok(m) => self.handle_stun(now, &pkt, &m),
                Err(_) => Handled::Dropped,
            };
            self.tick(now);
            return handled;
        }
        if self.selected_pair() == Some((pkt.destination, pkt.source))
            && let Some(s) = &mut self.selected
        {
            s.last_activity = now;
            return Handled::Data;
        }
        let known = self.checklist.pairs.iter().any(|p| {
            p.authenticated
                && self.locals[usize::from(p.local)].base == pkt.destination
                && self.remotes[usize::from(p.remote)].addr == pkt.source
        });
        if known {
            Handled::Data
        } else {
            Handled::Dropped
        }
    }

    fn handle_stun(&mut self, now: Instant, pkt: &Received<'_>, m: &Message<'_>) -> Handled {
        if m.method() != Method::BINDING {
            return Handled::Dropped;
        }
        // ICE always sends FINGERPRINT (§7.1, RFC 7983 demux); a bad one is not ICE.
        if m.verify_fingerprint().is_err() {
            return Handled::Dropped;
        }
        match m.class() {
            Class::Request => self.handle_request(now, pkt, m),
            Class::Success | Class::Error => self.handle_response(now, pkt, m),
            Class::Indication => {
                if self.selected_pair() == Some((pkt.destination, pkt.source))
                    && let Some(s) = &mut self.selected
                {
                    s.last_activity = now;
                }
                Handled::Stun
            }
        }
    }

    fn respond(&mut self, pkt: &Received<'_>, tid: &TransactionId, code: u16) {
        self.pending.push_back(Pending::Response {
            tid: *tid,
            local: pkt.destination,
            remote: pkt.source,
            code,
            unknown: [0; MAX_UNKNOWN],
        });
    }

    /// RFC 8445 §7.3: answering a check.
    fn handle_request(&mut self, now: Instant, pkt: &Received<'_>, m: &Message<'_>) -> Handled {
        let tid = m.transaction_id();
        let (Some(user), true) = (m.username(), m.integrity_offset().is_some()) else {
            self.respond(pkt, tid, 400);
            return Handled::Stun;
        };
        // USERNAME is "our ufrag:their ufrag" (§7.2.2); an unknown ufrag is dropped.
        match user.split_once(':') {
            Some((ours, _)) if ours == self.local.ufrag() => {}
            _ => return Handled::Dropped,
        }
        if m.verify_integrity(&self.local.key).is_err() {
            self.respond(pkt, tid, 401);
            return Handled::Stun;
        }
        // RFC 8489 §6.3.1.1: unknown comprehension-required attributes get a 420 listing
        // them (signed, the request being authentic); the check changes nothing.
        if m.has_unknown_required() {
            let mut unknown = [0u16; MAX_UNKNOWN];
            let types = m
                .unknown_required()
                .filter(|&t| attr::is_comprehension_required(t));
            for (slot, t) in unknown.iter_mut().zip(types) {
                *slot = t;
            }
            self.pending.push_back(Pending::Response {
                tid: *tid,
                local: pkt.destination,
                remote: pkt.source,
                code: 420,
                unknown,
            });
            return Handled::Stun;
        }
        let Some(prio) = m.priority() else {
            self.respond(pkt, tid, 400);
            return Handled::Stun;
        };
        // §7.3.1.1 role conflicts.
        let (their_ctl, their_ctd) = (m.ice_controlling(), m.ice_controlled());
        if self.cfg.lite {
            if their_ctd.is_some() {
                self.respond(pkt, tid, 487);
                return Handled::Stun;
            }
        } else if self.controlling
            && let Some(tb) = their_ctl
        {
            if self.tie_breaker >= tb {
                self.respond(pkt, tid, 487);
                return Handled::Stun;
            }
            self.switch_role(false);
        } else if !self.controlling
            && let Some(tb) = their_ctd
        {
            if self.tie_breaker >= tb {
                self.switch_role(true);
            } else {
                self.respond(pkt, tid, 487);
                return Handled::Stun;
            }
        }
        let Some(li) = self.local_index(pkt.destination, None) else {
            return Handled::Dropped;
        };
        self.respond(pkt, tid, 0);
        if self.state == ConnectionState::New {
            self.set_state(ConnectionState::Checking);
        }
        // §7.3.1.3: an unknown source is a peer-reflexive remote candidate.
        let ri = match self.remote_index(pkt.source) {
            Some(ri) => ri,
            None => {
                if self.remotes.len() >= usize::from(self.cfg.max_candidates) {
                    return Handled::Stun;
                }
                let mut c = Candidate::peer_reflexive(pkt.source, pkt.source, prio);
                c.related = None;
                c.component = self.locals[li].component;
                c.foundation = super::candidate::Foundation::from_hash(prflx_hash(pkt.source));
                self.remotes.reserve_exact(1);
                self.remotes.push(c);
                self.remotes.len() - 1
            }
        };
        let Some(pi) = self
            .form_pair(li, ri)
            .or_else(|| self.checklist.find(li as u16, ri as u16))
        else {
            return Handled::Stun;
        };
        let use_candidate = m.use_candidate() && !self.controlling;
        // NOMINATION only means something with USE-CANDIDATE: look it up only then.
        let nomination = match use_candidate {
            true => m.nomination().unwrap_or(NO_NOMINATION),
            false => NO_NOMINATION,
        };
        let p = &mut self.checklist.pairs[pi];
        p.authenticated = true;
        if let Some(s) = &mut self.selected
            && s.pair == Some(pi as u16)
        {
            s.last_activity = now;
        }
        if self.cfg.lite {
            // A lite agent does not check: the peer's nomination selects (§2.5).
            p.state = PairState::Succeeded;
            if use_candidate {
                self.accept_nomination(pi, nomination, now);
            }
            return Handled::Stun;
        }
        match p.state {
            PairState::Succeeded => {
                if use_candidate {
                    self.accept_nomination(pi, nomination, now);
                }
            }
            PairState::InProgress => {
                if use_candidate {
                    p.nominate_on_success = Some(nomination);
                }
                // §7.3.1.4 asks for a new check here. Our requests may have reached the
                // peer's NAT before the peer's own traffic opened it, using up most of
                // the budget there; the peer's request shows the path is open now. So an
                // unanswered check (retransmitted at least twice) starts over: sent now,
                // with the retransmission budget of a check sent twice (`sent = 2` also
                // keeps a nomination's NOMINATION value, counted on first sends). It
                // keeps its transaction id, so an answer to any earlier attempt still
                // counts (with a new id, crossing requests superseded each other's
                // answers for ever in the simulator), and a check answered within one
                // RTO costs nothing extra.
                if let Some(t) = &mut p.txn
                    && t.purpose != Purpose::Consent
                    && t.sent >= 3
                    && !t.queued
                {
                    t.resend(now, 2, self.cfg.rto.get());
                    let tid = t.tid;
                    self.pending.push_back(Pending::Check {
                        pair: pi as u16,
                        tid,
                    });
                }
            }
            PairState::Frozen | PairState::Waiting | PairState::Failed => {
                if use_candidate {
                    p.nominate_on_success = Some(nomination);
                }
                self.checklist.trigger(pi, false);
            }
        }
        Handled::Stun
    }

    /// Controlled side: the peer nominated pair `pi` (§7.3.1.5, renomination).
    fn accept_nomination(&mut self, pi: usize, nomination: u32, now: Instant) {
        let accept = if nomination != NO_NOMINATION {
            let ok = nomination >= self.nomination_seen;
            if ok {
                self.nomination_seen = nomination;
            }
            ok
        } else {
            match self.selected.and_then(|s| s.pair) {
                None => true,
                Some(sel) => {
                    self.checklist.pairs[pi].priority
                        >= self.checklist.pairs[usize::from(sel)].priority
                }
            }
        };
        if accept {
            self.select(pi, now);
        }
    }

    /// RFC 8445 §7.2.5: processing a response to our check.
    fn handle_response(&mut self, now: Instant, pkt: &Received<'_>, m: &Message<'_>) -> Handled {
        let tid = m.transaction_id();
        let Some(pi) = self
            .checklist
            .pairs
            .iter()
            .position(|p| p.txn.is_some_and(|t| &t.tid == tid))
        else {
            return Handled::Dropped;
        };
        let Some(remote) = &self.remote else {
            return Handled::Dropped;
        };
        let authentic = m.verify_integrity(&remote.key).is_ok();
        if m.class() == Class::Success && !authentic {
            return Handled::Dropped;
        }
        let (li, ri) = {
            let p = &self.checklist.pairs[pi];
            (usize::from(p.local), usize::from(p.remote))
        };
        let Some(txn) = self.checklist.pairs[pi].txn.take() else {
            return Handled::Dropped;
        };
        if self.nominating == Some(pi as u16) && txn.purpose == Purpose::Nominate {
            self.nominating = None;
        }
        // §7.2.5.2.1: non-symmetric addresses fail the check.
        if pkt.source != self.remotes[ri].addr || pkt.destination != self.locals[li].base {
            if txn.purpose != Purpose::Consent {
                self.checklist.pairs[pi].state = PairState::Failed;
            }
            return Handled::Stun;
        }
        if m.class() == Class::Error {
            let code = m.error_code().map_or(0, |e| e.code);
            if code == 487 && !self.cfg.lite {
                // §7.2.5.1: switch to the role opposite of what the request claimed
                // (our current role unless it already changed) and retry.
                let was_controlling = self.controlling;
                self.switch_role(!was_controlling);
                self.checklist.trigger(pi, true);
            } else if txn.purpose != Purpose::Consent {
                self.checklist.pairs[pi].state = PairState::Failed;
            }
            return Handled::Stun;
        }
        // Success.
        let rtt = now.saturating_duration_since(txn.last_sent);
        {
            let p = &mut self.checklist.pairs[pi];
            p.rtt = Some(rtt);
            p.last_response = Some(now);
            p.authenticated = true;
        }
        if let Some(s) = &mut self.selected
            && s.pair == Some(pi as u16)
        {
            s.last_activity = now;
            s.last_consent = now;
        }
        let mapped = m.xor_mapped_address().and_then(Result::ok);
        // §7.2.5.3.1: a mapped address we do not know is a local peer-reflexive candidate.
        if let Some(mapped) = mapped
            && !self.locals.iter().any(|l| l.addr == mapped)
            && self.locals.len() < usize::from(self.cfg.max_candidates)
        {
            let base = self.locals[li].base;
            let prio = prflx_priority(self.locals[li].priority);
            let mut c = Candidate::peer_reflexive(mapped, base, prio);
            c.component = self.locals[li].component;
            self.locals.reserve_exact(1);
            self.locals.push(c);
        }
        // §7.2.5.3.2: the valid pair's local candidate is the one at the mapped address.
        if let Some(mapped) = mapped {
            let base = self.locals[li].base;
            let component = self.locals[li].component;
            if let Some(v) = self
                .locals
                .iter()
                .position(|l| l.addr == mapped && l.base == base && l.component == component)
            {
                self.checklist.pairs[pi].valid_local = v as u16;
            }
        }
        if txn.purpose == Purpose::Consent {
            return Handled::Stun;
        }
        let foundation = self.checklist.pairs[pi].foundation;
        self.checklist.pairs[pi].state = PairState::Succeeded;
        self.checklist.unfreeze_foundation(foundation);
        self.first_valid_at.get_or_insert(now);
        if txn.purpose == Purpose::Nominate && self.controlling {
            if self.cfg.aggressive_nomination {
                let better = match self.selected.and_then(|s| s.pair) {
                    None => true,
                    Some(s) => {
                        self.checklist.pairs[pi].priority
                            > self.checklist.pairs[usize::from(s)].priority
                    }
                };
                if better {
                    self.select(pi, now);
                }
            } else {
                self.select(pi, now);
            }
        } else if !self.controlling
            && let Some(n) = self.checklist.pairs[pi].nominate_on_success.take()
        {
            self.accept_nomination(pi, n, now);
        }
        Handled::Stun
    }

    fn select(&mut self, pi: usize, now: Instant) {
        if self.selected.is_some_and(|s| s.pair == Some(pi as u16)) {
            return;
        }
        let Some((local, remote)) = self.pair_path(pi) else {
            return;
        };
        self.drop_unchecked();
        self.selected = Some(Selected {
            pair: Some(pi as u16),
            last_activity: now,
            last_consent: now,
            next_keepalive: now + self.cfg.keepalive_interval.get(),
        });
        self.events
            .push_back(IceEvent::SelectedPair { local, remote });
        self.set_state(ConnectionState::Connected);
        // Once connected the send queue holds a keepalive or consent check and an answer
        // to the peer's at a time: room for two (not the handshake's four) is kept, never
        // released, so steady state allocates nothing (it may grow once under bursts).
        self.pending.shrink_to(STEADY_PENDING);
    }

    fn set_state(&mut self, s: ConnectionState) {
        if self.state != s && self.state != ConnectionState::Closed {
            self.state = s;
            self.events.push_back(IceEvent::ConnectionState(s));
        }
    }

    /// Runs timers: retransmissions (§14.3), paced checks (§6.1.4.2), nomination (§8.1),
    /// keepalives and consent (§11, RFC 7675), and the connection state.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        if self.state == ConnectionState::Closed {
            return;
        }
        self.retransmit(now);
        self.tick(now);
    }

    fn retransmit(&mut self, now: Instant) {
        let (max, max_rto) = (self.cfg.max_binding_requests, self.cfg.max_rto.get());
        for i in 0..self.checklist.pairs.len() {
            let p = &mut self.checklist.pairs[i];
            let Some(t) = &mut p.txn else { continue };
            if t.queued || t.next_retransmit > now {
                continue;
            }
            if t.purpose == Purpose::Consent || t.sent >= max {
                let purpose = t.purpose;
                p.txn = None;
                if purpose != Purpose::Consent {
                    p.state = PairState::Failed;
                    if self.nominating == Some(i as u16) {
                        self.nominating = None;
                    }
                }
                continue;
            }
            t.resend(now, t.sent + 1, (t.rto * 2).min(max_rto));
            let tid = t.tid;
            self.pending.push_back(Pending::Check {
                pair: i as u16,
                tid,
            });
        }
    }

    fn tick(&mut self, now: Instant) {
        if self.state == ConnectionState::Closed {
            return;
        }
        if !self.cfg.lite {
            self.maybe_nominate(now);
            if self.remote.is_some() && self.next_check_at.is_none_or(|t| t <= now) {
                if let Some(i) = self.checklist.next_check() {
                    let purpose = if self.nominating == Some(i as u16)
                        || (self.controlling && self.cfg.aggressive_nomination)
                    {
                        Purpose::Nominate
                    } else {
                        Purpose::Check
                    };
                    self.start_transaction(i, purpose, now);
                    self.next_check_at = Some(now + self.cfg.ta.get());
                } else {
                    self.next_check_at = None;
                }
            }
        }
        self.liveness(now);
        self.update_state(now);
    }

    fn start_transaction(&mut self, i: usize, purpose: Purpose, now: Instant) {
        let mut tid = [0u8; 12];
        self.rng.fill(&mut tid);
        if let Some(prefix) = self.cfg.tid_prefix {
            tid[..6].copy_from_slice(&prefix);
        }
        let rto = if purpose == Purpose::Consent {
            self.cfg.keepalive_interval.get()
        } else {
            self.cfg.rto.get()
        };
        let p = &mut self.checklist.pairs[i];
        if purpose != Purpose::Consent && p.state != PairState::Succeeded {
            p.state = PairState::InProgress;
        }
        p.txn = Some(Transaction {
            tid,
            purpose,
            sent: 1,
            last_sent: now,
            next_retransmit: now + rto,
            rto,
            queued: true,
        });
        self.pending.push_back(Pending::Check {
            pair: i as u16,
            tid,
        });
    }

    /// §8.1.1 regular nomination: the controlling agent nominates the best valid pair once
    /// no better pair can still succeed or `nomination_delay` passed since the first valid
    /// pair; with renomination a later, better valid pair is nominated again.
    fn maybe_nominate(&mut self, now: Instant) {
        if !self.controlling
            || self.cfg.aggressive_nomination
            || self.remote.is_none()
            || self.nominating.is_some()
        {
            return;
        }
        let sel = self.selected.and_then(|s| s.pair);
        // The selected pair went quiet (Disconnected), e.g. the peer's interface went
        // away: with renomination, move to the best other valid pair.
        let quiet = self.cfg.renomination && self.state == ConnectionState::Disconnected;
        let best = if quiet {
            self.checklist.best_valid_except(sel.map(usize::from))
        } else {
            self.checklist.best_valid()
        };
        let Some(best) = best else {
            return;
        };
        let prio = self.checklist.pairs[best].priority;
        let want = match sel {
            // No selected pair (yet, or its local candidate is gone).
            None => true,
            // Renomination: a better valid pair, or any other once the selected one is quiet.
            Some(s) => {
                self.cfg.renomination
                    && usize::from(s) != best
                    && (quiet || prio > self.checklist.pairs[usize::from(s)].priority)
            }
        };
        if !want {
            return;
        }
        let waited = self
            .first_valid_at
            .is_some_and(|t| now >= t + self.cfg.nomination_delay.get());
        if waited || !self.checklist.better_pending(prio) {
            self.nominating = Some(best as u16);
            self.checklist.trigger(best, true);
        }
    }

    fn liveness(&mut self, now: Instant) {
        let Some(mut s) = self.selected else { return };
        let Some(pi) = s.pair else {
            // The old path an ICE restart left: its credentials are gone, so it gets no
            // consent checks and may carry data only until its last consent expires
            // (RFC 7675 §5.1); then it goes as if its interface had. A lite agent checks
            // nothing: its old path goes once the peer has been silent on it for
            // `failed_timeout` (and with it the agent, which only a peer's checks revive).
            if !self.cfg.lite
                && now.saturating_duration_since(s.last_consent) >= self.cfg.consent_timeout.get()
            {
                self.unselect();
                self.set_state(ConnectionState::Disconnected);
            } else if self.cfg.lite
                && now.saturating_duration_since(s.last_activity) >= self.cfg.failed_timeout.get()
            {
                self.unselect();
                self.set_state(ConnectionState::Failed);
            }
            return;
        };
        let pi = usize::from(pi);
        if !self.cfg.lite && self.remote.is_some() && now >= s.next_keepalive {
            let busy = self.checklist.pairs[pi]
                .txn
                .is_some_and(|t| t.purpose != Purpose::Consent);
            if !busy {
                self.start_transaction(pi, Purpose::Consent, now);
            }
            // RFC 7675 §5.1: consent checks at a randomized 0.8–1.2 × interval.
            let c = self.cfg.consent_interval.get();
            let jitter =
                c.mul_f64(0.8 + 0.4 * (self.rng.below(1 << 20) as f64 / f64::from(1 << 20)));
            s.next_keepalive = now + self.cfg.keepalive_interval.get().min(jitter);
        }
        let idle = now.saturating_duration_since(s.last_activity);
        let no_consent = !self.cfg.lite
            && now.saturating_duration_since(s.last_consent) >= self.cfg.consent_timeout.get();
        if no_consent || idle >= self.cfg.failed_timeout.get() {
            self.unselect();
            self.set_state(ConnectionState::Failed);
            return;
        }
        self.selected = Some(s);
        if idle >= self.cfg.disconnected_timeout.get() {
            self.set_state(ConnectionState::Disconnected);
        } else if self.state == ConnectionState::Disconnected {
            self.set_state(ConnectionState::Connected);
        }
    }

    /// Not connected (New, Checking, or Disconnected without a path) with nothing left to
    /// check: no pair selected, every pair (if any) failed, and both sides' candidates are
    /// all in. Failed once [`PAC_WAIT`] passes.
    fn nothing_left(&self) -> bool {
        // Disconnected without a selection: its path went (its interface, or a restart's
        // old path out of consent) and no other pair took over.
        matches!(
            self.state,
            ConnectionState::New | ConnectionState::Checking | ConnectionState::Disconnected
        ) && self.selected.is_none()
            && self.remote_end
            && self.remote.is_some()
            && self.checklist.all_failed()
            && (self.local_end || !self.checklist.pairs.is_empty())
            && !self.cfg.lite
    }

    fn update_state(&mut self, now: Instant) {
        match self.state {
            _ if self.nothing_left() => {
                let rare = self.rare.get_or_insert_with(Box::default);
                if now >= *rare.pac_until.get_or_insert(now + PAC_WAIT) {
                    self.shed_rare(|r| r.pac_until = None);
                    self.set_state(ConnectionState::Failed);
                }
            }
            ConnectionState::Connected => {
                let busy = self
                    .checklist
                    .pairs
                    .iter()
                    .any(|p| p.state == PairState::InProgress);
                if self.local_end
                    && self.remote_end
                    && self.nominating.is_none()
                    && !busy
                    && !self.checklist.has_work()
                    && self.selected.is_some_and(|s| s.pair.is_some())
                {
                    self.set_state(ConnectionState::Completed);
                }
            }
            _ => {}
        }
    }

    /// Writes the next datagram into `buf` (a check, a response) and says where to send it.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let _ = now;
        while let Some(p) = self.pending.pop_front() {
            match p {
                Pending::Response {
                    tid,
                    local,
                    remote,
                    code,
                    unknown,
                } => {
                    let r = if code == 0 {
                        write_success(buf, &tid, remote, &self.local.key)
                    } else {
                        // 401/400 answer requests we could not authenticate: unsigned.
                        let key = matches!(code, 420 | 487).then_some(&self.local.key);
                        let n = unknown.iter().take_while(|&&t| t != 0).count();
                        write_error(buf, &tid, code, &unknown[..n], key)
                    };
                    if let Ok(size) = r {
                        return Some(Transmit {
                            source: local,
                            destination: remote,
                            size,
                        });
                    }
                }
                Pending::Check { pair, tid } => {
                    let Some(remote) = &self.remote else { continue };
                    let Some(p) = self.checklist.pairs.get_mut(usize::from(pair)) else {
                        continue;
                    };
                    let Some(t) = &mut p.txn else { continue };
                    if t.tid != tid {
                        continue;
                    }
                    t.queued = false;
                    let purpose = t.purpose;
                    let local = &self.locals[usize::from(p.local)];
                    let dest = self.remotes[usize::from(p.remote)].addr;
                    let use_candidate = purpose == Purpose::Nominate && self.controlling;
                    if use_candidate
                        && !self.cfg.aggressive_nomination
                        && t.sent == 1
                        && self.nominating == Some(pair)
                    {
                        self.nomination_sent += 1;
                    }
                    let params = CheckParams {
                        remote_ufrag: remote.ufrag(),
                        local_ufrag: self.local.ufrag(),
                        priority: prflx_priority(local.priority),
                        controlling: self.controlling,
                        tie_breaker: self.tie_breaker,
                        use_candidate,
                        nomination: (use_candidate && self.cfg.renomination)
                            .then_some(self.nomination_sent),
                    };
                    if let Ok(size) = write_request(buf, &tid, &params, &remote.key) {
                        return Some(Transmit {
                            source: local.base,
                            destination: dest,
                            size,
                        });
                    }
                }
            }
        }
        None
    }

    /// The next application-visible event.
    pub fn poll_event(&mut self) -> Option<IceEvent> {
        let e = self.events.pop_front();
        if e.is_none() && self.events.capacity() > 0 {
            // Events are rare after connection: give the memory back.
            self.events = VecDeque::new();
        }
        e
    }

    /// When [`handle_timeout`](Self::handle_timeout) next wants to run. Right after
    /// adding candidates or credentials this is the last `now` seen (run it again); call
    /// `handle_timeout` once after creating the agent.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == ConnectionState::Closed {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for p in &self.checklist.pairs {
            if let Some(tx) = &p.txn
                && !tx.queued
            {
                at(tx.next_retransmit);
            }
        }
        if !self.cfg.lite && self.remote.is_some() {
            if self.checklist.can_start() {
                match (self.next_check_at, self.last_now) {
                    (Some(n), _) => at(n),
                    (None, Some(n)) => at(n),
                    _ => {}
                }
            }
            if self.controlling
                && self.nominating.is_none()
                && self.selected.is_none_or(|s| s.pair.is_none())
                && self.checklist.best_valid().is_some()
                && let Some(f) = self.first_valid_at
            {
                at(f + self.cfg.nomination_delay.get());
            }
            if self.nothing_left() {
                // The PAC deadline, or now (the last `now` seen) to set it.
                match (self.rare.as_ref().and_then(|r| r.pac_until), self.last_now) {
                    (Some(until), _) => at(until),
                    (None, Some(n)) => at(n),
                    _ => {}
                }
            }
        }
        if let Some(s) = &self.selected
            && s.pair.is_none()
        {
            // A restart's old path: until its consent expires (lite: until the peer has
            // been silent on it for `failed_timeout`).
            if self.cfg.lite {
                at(s.last_activity + self.cfg.failed_timeout.get());
            } else {
                at(s.last_consent + self.cfg.consent_timeout.get());
            }
        }
        if let Some(s) = &self.selected
            && s.pair.is_some()
        {
            if !self.cfg.lite && self.remote.is_some() {
                at(s.next_keepalive);
                at(s.last_consent + self.cfg.consent_timeout.get());
            }
            if self.state == ConnectionState::Disconnected {
                at(s.last_activity + self.cfg.failed_timeout.get());
            } else {
                at(s.last_activity + self.cfg.disconnected_timeout.get());
            }
        }
        t
    }
}

/// PRIORITY sent in a check (§7.1.1): the local candidate's priority with the
/// peer-reflexive type preference.
fn prflx_priority(local: u32) -> u32 {
    (CandidateKind::PeerReflexive.type_preference() << 24) | (local & 0x00FF_FFFF)
}

fn fnv(s: &[u8]) -> u32 {
    fnv_from(0x811C_9DC5, s)
}

/// FNV-1a continued from `h`.
fn fnv_from(mut h: u32, s: &[u8]) -> u32 {
    for &b in s {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The foundation hash of a remote peer-reflexive candidate: FNV-1a of the text
/// `prflx<source>` (e.g. `prflx10.0.0.2:6000`), hashed as it is formatted, no allocation.
fn prflx_hash(source: SocketAddr) -> u32 {
    struct Fnv(u32);
    impl std::fmt::Write for Fnv {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 = fnv_from(self.0, s.as_bytes());
            Ok(())
        }
    }
    let mut h = Fnv(fnv(b"prflx"));
    let _ = std::fmt::Write::write_fmt(&mut h, format_args!("{source}"));
    h.0
}
