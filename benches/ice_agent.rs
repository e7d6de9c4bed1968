//! Time per established connection: two agents (1 host candidate each) exchanging STUN in
//! memory under a virtual clock, from creation to both having selected/nominated a pair.
//!
//! The same scenario runs on our [`icering::ice::IceAgent`] and, side by side in the same
//! criterion group, on `is` 0.12 (str0m's standalone sans-IO ICE agent):
//!
//! - candidates 127.0.0.1:1000 (controlling) and 127.0.0.1:2000 (controlled) — addresses
//!   only, no socket is ever opened;
//! - credentials and candidates signalled before the first `handle_timeout`;
//! - one loop for both: pump A→B, pump B→A (each pump runs `handle_timeout` when the
//!   agent's `poll_timeout` has passed, then hands every transmit to the peer's
//!   `handle_packet` at the same virtual `now`), then advance `now` to the earlier
//!   `poll_timeout`; stop when both agents are connected with a selected/nominated pair;
//! - `is` takes a parsed [`is::stun::StunMessage`], so its pump parses each datagram
//!   (our `handle_packet` parses internally): the parse is part of both receive paths.
//!
//! Criterion's throughput is the number of Binding requests (connectivity checks) one
//! establishment sends, so its `thrpt` line reads as connectivity checks per second. The
//! STUN message counts per establishment are printed before the measurements.
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};

/// Local addresses of the controlling (A) and controlled (B) agent. Never bound.
const ADDR_A: &str = "127.0.0.1:1000";
const ADDR_B: &str = "127.0.0.1:2000";
/// Loop bound: both agents connect in far fewer rounds; more means a broken scenario.
const MAX_ROUNDS: u32 = 10_000;

/// STUN messages sent (both directions) until both agents are connected.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Msgs {
    requests: u32,
    success: u32,
    other: u32,
    /// Print each message (virtual time since this instant), for `ICE_BENCH_TRACE=1`.
    trace: Option<Instant>,
}

impl Msgs {
    fn traced(start: Instant, name: &str) -> Msgs {
        let trace = std::env::var_os("ICE_BENCH_TRACE").map(|_| start);
        if trace.is_some() {
            println!("STUN messages until both connected, {name} (virtual time):");
        }
        Msgs {
            trace,
            ..Msgs::default()
        }
    }
    fn counts(&self) -> (u32, u32, u32) {
        (self.requests, self.success, self.other)
    }
    fn count(&mut self, now: Instant, from: &str, datagram: &[u8]) {
        let kind = match datagram.get(..2) {
            Some([0x00, 0x01]) => {
                self.requests += 1;
                "Binding request"
            }
            Some([0x01, 0x01]) => {
                self.success += 1;
                "Binding success"
            }
            _ => {
                self.other += 1;
                "other"
            }
        };
        if let Some(start) = self.trace {
            println!(
                "  {:>7.1} ms  {from}  {kind}{}",
                (now - start).as_secs_f64() * 1e3,
                if has_use_candidate(datagram) {
                    " USE-CANDIDATE"
                } else {
                    ""
                }
            );
        }
    }
    fn total(&self) -> u32 {
        self.requests + self.success + self.other
    }
}

/// Whether a STUN message carries USE-CANDIDATE (0x0025); only used when tracing.
fn has_use_candidate(m: &[u8]) -> bool {
    let mut i = 20;
    while i + 4 <= m.len() {
        let t = u16::from_be_bytes([m[i], m[i + 1]]);
        let l = usize::from(u16::from_be_bytes([m[i + 2], m[i + 3]]));
        if t == 0x0025 {
            return true;
        }
        i += 4 + l.div_ceil(4) * 4;
    }
    false
}

mod ours {
    use super::*;
    const NAME: &str = "icering";
    use icering::ice::{Candidate, IceAgent, IceConfig};
    use icering::net::Received;

    /// `keep`: every datagram sent, in order (for the integrity floor; `None` when timed).
    fn pump(
        now: Instant,
        (x, y): (&mut IceAgent, &mut IceAgent),
        buf: &mut [u8],
        m: &mut Msgs,
        from: &str,
        keep: &mut Option<&mut Vec<Vec<u8>>>,
    ) {
        if x.poll_timeout().is_some_and(|t| t <= now) {
            x.handle_timeout(now);
        }
        while let Some(t) = x.poll_transmit(now, buf) {
            m.count(now, from, &buf[..t.size]);
            if let Some(k) = keep {
                k.push(buf[..t.size].to_vec());
            }
            let pkt = Received {
                source: t.source,
                destination: t.destination,
                contents: &buf[..t.size],
            };
            y.handle_packet(now, pkt);
        }
    }

    pub fn establish(seed: u64, start: Instant, trace: bool) -> (IceAgent, IceAgent, Msgs) {
        establish_keeping(seed, start, trace, None)
    }

    /// [`establish`], keeping every datagram sent in `keep` when given.
    pub fn establish_keeping(
        seed: u64,
        start: Instant,
        trace: bool,
        mut keep: Option<&mut Vec<Vec<u8>>>,
    ) -> (IceAgent, IceAgent, Msgs) {
        let mut a = IceAgent::new(IceConfig {
            controlling: true,
            seed,
            ..Default::default()
        })
        .unwrap();
        let mut b = IceAgent::new(IceConfig {
            seed: seed ^ 0xFF,
            ..Default::default()
        })
        .unwrap();
        let a_addr: SocketAddr = ADDR_A.parse().unwrap();
        let b_addr: SocketAddr = ADDR_B.parse().unwrap();
        a.add_local_candidate(Candidate::host(a_addr)).unwrap();
        b.add_local_candidate(Candidate::host(b_addr)).unwrap();
        // Our API borrows the peer's strings (no copies); `is` takes owned `IceCreds`.
        let (u, p) = a.local_credentials();
        b.set_remote_credentials(u, p).unwrap();
        let (u, p) = b.local_credentials();
        a.set_remote_credentials(u, p).unwrap();
        a.add_remote_candidate(b.local_candidates()[0].clone())
            .unwrap();
        b.add_remote_candidate(a.local_candidates()[0].clone())
            .unwrap();
        let mut buf = [0u8; 1500];
        let mut m = match trace {
            true => Msgs::traced(start, NAME),
            false => Msgs::default(),
        };
        let mut now = start;
        a.handle_timeout(now);
        b.handle_timeout(now);
        let mut rounds = 0;
        while a.selected_pair().is_none() || b.selected_pair().is_none() {
            rounds += 1;
            assert!(rounds < MAX_ROUNDS, "icering pair did not connect");
            pump(now, (&mut a, &mut b), &mut buf, &mut m, "A→B", &mut keep);
            pump(now, (&mut b, &mut a), &mut buf, &mut m, "B→A", &mut keep);
            let next = [a.poll_timeout(), b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            now = next.map_or(now + Duration::from_millis(1), |t| t.max(now));
        }
        (a, b, m)
    }
}

/// The hashing that any pair must do to exchange these messages under RFC 8489's
/// short-term credentials, and nothing else: the cost below which no implementation can
/// establish the pair.
///
/// - each agent keys HMAC-SHA1 (RFC 2104) with its own and its peer's password: two
///   SHA-1 blocks (inner and outer pad) per key, four keys;
/// - each message's MESSAGE-INTEGRITY (RFC 8489 §14.5) is computed twice, by its sender
///   and by its receiver: SHA-1 over the padded bytes before the attribute (the keyed
///   inner state resumes after the key block), then one outer block;
/// - each message's FINGERPRINT (§14.7) is computed twice: CRC-32 of the bytes before it.
///
/// Built from the datagrams of one real establishment, so the block count follows the
/// messages (38 blocks for icering's 6 messages: each Binding request's bytes before
/// MESSAGE-INTEGRITY are 56 bytes, one past what fits one block with its padding).
mod floor {
    /// SHA-1 blocks and fingerprinted byte ranges, in the order they are hashed.
    pub struct Work {
        pub blocks: Vec<[u8; 64]>,
        pub key_blocks: usize,
        fingerprinted: Vec<Vec<u8>>,
    }

    /// The offset of `attr`'s header in STUN message `m`, if it holds one.
    fn attr_offset(m: &[u8], attr: u16) -> Option<usize> {
        let mut i = 20;
        while i + 4 <= m.len() {
            let t = u16::from_be_bytes([m[i], m[i + 1]]);
            let l = usize::from(u16::from_be_bytes([m[i + 2], m[i + 3]]));
            if t == attr {
                return Some(i);
            }
            i += 4 + l.div_ceil(4) * 4;
        }
        None
    }

    /// `data` after the 64-byte key block, MD-padded (RFC 3174 §4) into whole blocks.
    fn padded(data: &[u8]) -> Vec<[u8; 64]> {
        let mut v = data.to_vec();
        let bits = ((64 + data.len()) as u64) * 8;
        v.push(0x80);
        while v.len() % 64 != 56 {
            v.push(0);
        }
        v.extend_from_slice(&bits.to_be_bytes());
        v.chunks(64).map(|c| c.try_into().unwrap()).collect()
    }

    const H0: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];

    fn hash(state: [u32; 5], blocks: &[[u8; 64]]) -> [u8; 20] {
        let mut st = state;
        sha1::block_api::compress(&mut st, blocks);
        let mut out = [0u8; 20];
        for (o, w) in out.chunks_mut(4).zip(st) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// HMAC-SHA1 from these very blocks: `[ipad, opad]` key blocks, inner blocks.
    fn hmac(key: &[[u8; 64]; 2], inner: &[[u8; 64]]) -> [u8; 20] {
        let mut st = H0;
        sha1::block_api::compress(&mut st, &[key[0]]);
        let digest = hash(st, inner);
        let mut st = H0;
        sha1::block_api::compress(&mut st, &[key[1]]);
        hash(st, &padded(&digest))
    }

    pub fn of(passwords: [&str; 2], datagrams: &[Vec<u8>]) -> Work {
        let keys = passwords.map(|pwd| {
            let mut key = [0u8; 64];
            key[..pwd.len()].copy_from_slice(pwd.as_bytes());
            [0x36u8, 0x5c].map(|pad| key.map(|x| x ^ pad))
        });
        let mut blocks = Vec::new();
        for k in &keys {
            // Each agent keys both passwords: twice each.
            blocks.extend_from_slice(&[k[0], k[1], k[0], k[1]]);
        }
        let key_blocks = blocks.len();
        let mut fingerprinted = Vec::new();
        for m in datagrams {
            let mi = attr_offset(m, 0x0008).expect("every ICE check and response has MI");
            let fp = attr_offset(m, 0x8028).expect("every ICE check and response has FP");
            // The header's length as it reads at the integrity attribute (RFC 8489 §14.5).
            let mut covered = m[..mi].to_vec();
            covered[2..4].copy_from_slice(&((mi + 24 - 20) as u16).to_be_bytes());
            let inner = padded(&covered);
            // These blocks are the real ones: they reproduce the message's MAC.
            assert!(
                keys.iter()
                    .any(|k| hmac(k, &inner)[..] == m[mi + 4..mi + 24]),
                "floor blocks must reproduce MESSAGE-INTEGRITY"
            );
            let outer = padded(&[0u8; 20]);
            for _ in 0..2 {
                blocks.extend_from_slice(&inner);
                blocks.extend_from_slice(&outer);
                fingerprinted.push(m[..fp].to_vec());
            }
        }
        Work {
            blocks,
            key_blocks,
            fingerprinted,
        }
    }

    /// Runs the work: every block through the SHA-1 block function, every range through
    /// CRC-32 (the crates the codec uses).
    pub fn run(w: &Work) -> u32 {
        let mut state = H0;
        for b in &w.blocks {
            sha1::block_api::compress(&mut state, std::slice::from_ref(b));
        }
        w.fingerprinted
            .iter()
            .fold(state[0], |acc, f| acc ^ crc32fast::hash(f))
    }
}

mod str0m_is {
    use super::*;
    const NAME: &str = "is 0.12";
    use is::stun::{StunMessage, StunPacket};
    use is::{Candidate, IceAgent, IceCreds};

    /// HMAC-SHA1 for `is` built without default features (as str0m uses it): a plain
    /// keyed HMAC per call, as its default provider does, on our `hmac`/`sha1` crates.
    #[derive(Debug)]
    struct HmacSha1;

    impl is::Sha1HmacProvider for HmacSha1 {
        fn sha1_hmac(&self, key: &[u8], payloads: &[&[u8]]) -> [u8; 20] {
            use hmac::{Hmac, KeyInit, Mac};
            let mut mac =
                Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC-SHA1 takes any key length");
            for p in payloads {
                mac.update(p);
            }
            mac.finalize().into_bytes().into()
        }
    }

    static HMAC: HmacSha1 = HmacSha1;

    fn pump(now: Instant, x: &mut IceAgent, y: &mut IceAgent, m: &mut Msgs, from: &str) {
        if x.poll_timeout().is_some_and(|t| t <= now) {
            x.handle_timeout(now);
        }
        while let Some(t) = x.poll_transmit() {
            m.count(now, from, &t.contents);
            let message = StunMessage::parse(&t.contents).expect("is sends only STUN");
            let pkt = StunPacket {
                proto: t.proto,
                source: t.source,
                destination: t.destination,
                message,
            };
            y.handle_packet(now, pkt);
        }
    }

    pub fn establish(start: Instant, trace: bool) -> (IceAgent, IceAgent, Msgs) {
        let mut a = IceAgent::with_hmac(IceCreds::new(), &HMAC);
        let mut b = IceAgent::with_hmac(IceCreds::new(), &HMAC);
        a.set_controlling(true);
        b.set_controlling(false);
        let a_addr: SocketAddr = ADDR_A.parse().unwrap();
        let b_addr: SocketAddr = ADDR_B.parse().unwrap();
        let ca = a
            .add_local_candidate(Candidate::host(a_addr, "udp").unwrap())
            .unwrap()
            .clone();
        let cb = b
            .add_local_candidate(Candidate::host(b_addr, "udp").unwrap())
            .unwrap()
            .clone();
        b.set_remote_credentials(a.local_credentials().clone());
        a.set_remote_credentials(b.local_credentials().clone());
        a.add_remote_candidate(cb);
        b.add_remote_candidate(ca);
        let mut m = match trace {
            true => Msgs::traced(start, NAME),
            false => Msgs::default(),
        };
        let mut now = start;
        a.handle_timeout(now);
        b.handle_timeout(now);
        let mut rounds = 0;
        while !a.state().is_connected() || !b.state().is_connected() {
            rounds += 1;
            assert!(rounds < MAX_ROUNDS, "is pair did not connect");
            pump(now, &mut a, &mut b, &mut m, "A→B");
            pump(now, &mut b, &mut a, &mut m, "B→A");
            let next = [a.poll_timeout(), b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            now = next.map_or(now + Duration::from_millis(1), |t| t.max(now));
        }
        (a, b, m)
    }
}

fn bench(c: &mut Criterion) {
    let start = Instant::now();

    // Message counts are deterministic per implementation; check a few runs agree.
    // `ICE_BENCH_TRACE=1` prints the message sequence of the first run of each.
    let ours_msgs = ours::establish(1, start, true).2;
    let is_msgs = str0m_is::establish(start, true).2;
    for seed in 2..20 {
        let (o, i) = (
            ours::establish(seed, start, false),
            str0m_is::establish(start, false),
        );
        assert_eq!(o.2.counts(), ours_msgs.counts());
        assert_eq!(i.2.counts(), is_msgs.counts());
    }
    for (name, m) in [("icering", ours_msgs), ("is 0.12", is_msgs)] {
        println!(
            "STUN messages until both connected, {name}: {} ({} Binding requests, {} success responses, {} other)",
            m.total(),
            m.requests,
            m.success,
            m.other
        );
    }

    let mut sent = Vec::new();
    let (a, b, _) = ours::establish_keeping(1, start, false, Some(&mut sent));
    let floor = floor::of([a.local_credentials().1, b.local_credentials().1], &sent);
    println!(
        "integrity floor per established pair: {} SHA-1 blocks ({} keying 4 HMAC keys, {} for {} messages of {:?} bytes signed and verified), {} FINGERPRINTs",
        floor.blocks.len(),
        floor.key_blocks,
        floor.blocks.len() - floor.key_blocks,
        sent.len(),
        sent.iter().map(Vec::len).collect::<Vec<_>>(),
        2 * sent.len()
    );

    let mut g = c.benchmark_group("ice: establish agent pair (in memory, virtual clock)");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));

    let mut seed = 0;
    g.throughput(Throughput::Elements(ours_msgs.requests.into()));
    g.bench_function("icering", |bch| {
        bch.iter(|| {
            seed += 1;
            ours::establish(black_box(seed), start, false)
        })
    });

    g.throughput(Throughput::Elements(is_msgs.requests.into()));
    g.bench_function("is 0.12 (str0m)", |bch| {
        bch.iter(|| str0m_is::establish(black_box(start), false))
    });

    // Not an agent: the hashing alone (see `floor`), the lower bound of both rows above.
    g.throughput(Throughput::Elements(ours_msgs.requests.into()));
    g.bench_function("integrity floor (SHA-1 + CRC-32 only)", |bch| {
        bch.iter(|| floor::run(black_box(&floor)))
    });
    g.finish();
}

/// One timed iteration of ours: establish a pair and drop it (the callgrind toggle).
#[inline(never)]
fn cycle_ours(seed: u64, start: Instant) {
    drop(black_box(ours::establish(black_box(seed), start, false)));
}

/// One timed iteration of `is`: establish a pair and drop it (the callgrind toggle).
#[inline(never)]
fn cycle_is(start: Instant) {
    drop(black_box(str0m_is::establish(black_box(start), false)));
}

/// `ICE_BENCH_COUNT=N`: establish N pairs with each agent and exit, without criterion,
/// for instruction counts (`valgrind --tool=callgrind --toggle-collect=...establish*`,
/// see docs/benchmarks.md). Otherwise the criterion group above.
fn main() {
    if let Some(n) = std::env::var("ICE_BENCH_COUNT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let start = Instant::now();
        for seed in 0..n {
            cycle_ours(seed, start);
        }
        for _ in 0..n {
            cycle_is(start);
        }
        println!("established {n} pairs with each agent");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

criterion_group!(benches, bench);
