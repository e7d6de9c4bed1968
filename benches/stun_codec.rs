//! STUN codec micro-benchmarks, icering side by side with the webrtc-rs `stun` (and, for
//! ChannelData, `turn`) crates in the same run. Each group benches the same operation on
//! the same bytes: `icering` and `peer`.
//!
//! `cargo bench --bench stun_codec`
//!
//! With `STUN_CODEC_DECODE_LOOP=N` set, the binary skips criterion and runs the decode
//! group's icering closure N times through `decode_once`, for instruction counts that do
//! not depend on the machine's load (docs/benchmarks.md):
//! `STUN_CODEC_DECODE_LOOP=100000 valgrind --tool=callgrind --toggle-collect='*decode_once*' target/release/deps/stun_codec-*`
//! (with `STUN_CODEC_VIEW=1` and `--toggle-collect='*view_once*'`: the view group's closure;
//! with `STUN_CODEC_SHAPE=unsigned`: the same request without MESSAGE-INTEGRITY and
//! FINGERPRINT, `=prio_first`: signed, PRIORITY before USERNAME, `=chrome`: signed, with
//! libwebrtc's GOOG-NETWORK-INFO after USERNAME — other shapes through the parser).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use icering::stun::{
    Attribute, ChannelData, Class, IntegrityKey, Message, MessageType, MessageWriter, Method,
};
use stun::agent::TransactionId as PeerTid;
use stun::attributes::{ATTR_ICE_CONTROLLING, ATTR_PRIORITY, ATTR_USERNAME, AttrType};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{BINDING_REQUEST, Message as PeerMessage, Setter};
use stun::textattrs::TextAttribute;

const TID: [u8; 12] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98,
];
const USER: &str = "9c5bd4f1:a8e3b3c2";
const PWD: &str = "asd88fgpdd777uzjYhagZg";
const PRIORITY: u32 = 0x6e00_1eff;
const TIE: u64 = 0x0123_4567_89ab_cdef;

struct Raw(AttrType, Vec<u8>);

impl Setter for Raw {
    fn add_to(&self, m: &mut PeerMessage) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

fn peer_setters() -> Vec<Box<dyn Setter>> {
    vec![
        Box::new(BINDING_REQUEST),
        Box::new(PeerTid(TID)),
        Box::new(TextAttribute::new(ATTR_USERNAME, USER.into())),
        Box::new(Raw(ATTR_PRIORITY, PRIORITY.to_be_bytes().to_vec())),
        Box::new(Raw(ATTR_ICE_CONTROLLING, TIE.to_be_bytes().to_vec())),
        Box::new(MessageIntegrity::new_short_term_integrity(PWD.into())),
        Box::new(FINGERPRINT),
    ]
}

/// Binding request with USERNAME, PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY, FINGERPRINT.
#[inline]
fn ours_encode(buf: &mut [u8], key: &IntegrityKey) -> usize {
    let mut w =
        MessageWriter::new(buf, MessageType::new(Method::BINDING, Class::Request), &TID).unwrap();
    w.add(&Attribute::Username(USER)).unwrap();
    w.add(&Attribute::Priority(PRIORITY)).unwrap();
    w.add(&Attribute::IceControlling(TIE)).unwrap();
    w.add_message_integrity(key).unwrap();
    w.add_fingerprint().unwrap();
    w.finish()
}

/// The decode group's icering closure: parse plus the three getters an ICE agent reads.
#[inline(never)]
fn decode_once(bytes: &[u8]) -> (Option<&str>, Option<u32>, Option<u64>) {
    let m = Message::parse(black_box(bytes)).unwrap();
    (m.username(), m.priority(), m.ice_controlling())
}

/// The view group's icering closure: the checked constructor alone.
#[inline(never)]
fn view_once(bytes: &[u8]) {
    let m = Message::parse(black_box(bytes)).unwrap();
    black_box(&m);
}

/// Callgrind driver: `n` decodes of the bench message (`view`: `view_once`, else
/// `decode_once` with its results checked).
fn decode_loop(n: u64, view: bool) {
    let key = IntegrityKey::new(PWD.as_bytes());
    let mut buf = [0u8; 256];
    let mut len = ours_encode(&mut buf, &key);
    // Other shapes of the same request.
    if let Ok(shape) = std::env::var("STUN_CODEC_SHAPE") {
        let (prio_first, signed, net_info) = match shape.as_str() {
            "unsigned" => (false, false, false),
            "prio_first" => (true, true, false),
            "chrome" => (false, true, true),
            _ => panic!("STUN_CODEC_SHAPE is unsigned, prio_first or chrome"),
        };
        let typ = MessageType::new(Method::BINDING, Class::Request);
        let mut w = MessageWriter::new(&mut buf, typ, &TID).unwrap();
        if prio_first {
            w.add(&Attribute::Priority(PRIORITY)).unwrap();
        }
        w.add(&Attribute::Username(USER)).unwrap();
        if net_info {
            // GOOG-NETWORK-INFO: network id 1, cost 10.
            w.add_raw(0xC057, &[0, 1, 0, 10]).unwrap();
        }
        if !prio_first {
            w.add(&Attribute::Priority(PRIORITY)).unwrap();
        }
        w.add(&Attribute::IceControlling(TIE)).unwrap();
        if signed {
            w.add_message_integrity(&key).unwrap();
            w.add_fingerprint().unwrap();
        }
        len = w.finish();
    }
    for _ in 0..n {
        if view {
            view_once(black_box(&buf[..len]));
        } else {
            let got = black_box(decode_once(black_box(&buf[..len])));
            assert_eq!(got, (Some(USER), Some(PRIORITY), Some(TIE)));
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

fn benches(c: &mut Criterion) {
    let key = IntegrityKey::new(PWD.as_bytes());
    let mut buf = [0u8; 256];
    let n = ours_encode(&mut buf, &key);
    let bytes = buf[..n].to_vec();
    // Both codecs produce the same bytes, so they are benched on identical input.
    let mut peer = PeerMessage::new();
    peer.build(&peer_setters()).unwrap();
    assert_eq!(peer.raw, bytes);

    let mut g = c.benchmark_group("decode_binding_request");
    g.bench_function("icering", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(&bytes)).unwrap();
            black_box((m.username(), m.priority(), m.ice_controlling()))
        })
    });
    let mut pm = PeerMessage::new();
    g.bench_function("peer", |b| {
        b.iter(|| {
            pm.write(black_box(&bytes)).unwrap();
            let user = TextAttribute::get_from_as(&pm, ATTR_USERNAME).unwrap();
            let prio = u32::from_be_bytes(pm.get(ATTR_PRIORITY).unwrap().try_into().unwrap());
            let tie = u64::from_be_bytes(pm.get(ATTR_ICE_CONTROLLING).unwrap().try_into().unwrap());
            black_box((user, prio, tie));
        })
    });
    g.finish();

    // The checked view alone: header, TLV bounds and padding, MI/FP placement, the
    // unknown-attribute scan (peer: `Message::write`, pion's `Decode`, which likewise reads
    // the header and the attribute list without interpreting values).
    let mut g = c.benchmark_group("decode_binding_request_view");
    g.bench_function("icering", |b| b.iter(|| view_once(black_box(&bytes))));
    let mut pm = PeerMessage::new();
    g.bench_function("peer", |b| {
        b.iter(|| {
            pm.write(black_box(&bytes)).unwrap();
            black_box(pm.attributes.0.len());
        })
    });
    g.finish();

    let mut g = c.benchmark_group("encode_binding_request_mi_fp");
    g.bench_function("icering", |b| {
        let mut out = [0u8; 256];
        b.iter(|| black_box(ours_encode(black_box(&mut out), black_box(&key))))
    });
    let setters = peer_setters();
    let mut pm = PeerMessage::new();
    g.bench_function("peer", |b| {
        b.iter(|| {
            pm.build(black_box(&setters)).unwrap();
            black_box(pm.raw.len());
        })
    });
    g.finish();

    let mut g = c.benchmark_group("message_integrity_check");
    let m = Message::parse(&bytes).unwrap();
    g.bench_function("icering", |b| {
        b.iter(|| black_box(&m).verify_integrity(black_box(&key)).unwrap())
    });
    let mut pm = PeerMessage::new();
    pm.write(&bytes).unwrap();
    let peer_key = MessageIntegrity::new_short_term_integrity(PWD.into());
    g.bench_function("peer", |b| {
        b.iter(|| black_box(&peer_key).check(black_box(&mut pm)).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("fingerprint_check");
    g.bench_function("icering", |b| {
        b.iter(|| black_box(&m).verify_fingerprint().unwrap())
    });
    g.bench_function("peer", |b| {
        b.iter(|| FINGERPRINT.check(black_box(&pm)).unwrap())
    });
    g.finish();

    // 160 bytes of payload: 20 ms of G.711 audio.
    let payload = [0x5Au8; 160];
    let mut frame = [0u8; 164];
    let len = ChannelData {
        channel: 0x4001,
        data: &payload,
    }
    .encode(&mut frame, false)
    .unwrap();
    let frame = &frame[..len];
    let mut g = c.benchmark_group("channel_data_decode");
    g.bench_function("icering", |b| {
        b.iter(|| {
            let cd = ChannelData::parse_udp(black_box(frame)).unwrap();
            black_box((cd.channel, cd.data.len()))
        })
    });
    let mut pcd = turn::proto::chandata::ChannelData::default();
    g.bench_function("peer", |b| {
        b.iter(|| {
            pcd.raw.clear();
            pcd.raw.extend_from_slice(black_box(frame));
            pcd.decode().unwrap();
            black_box((pcd.number.0, pcd.data.len()));
        })
    });
    g.finish();
}

criterion_group! {
    name = stun_codec;
    config = config();
    targets = benches
}
fn main() {
    if let Some(n) = std::env::var("STUN_CODEC_DECODE_LOOP")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        decode_loop(n, std::env::var_os("STUN_CODEC_VIEW").is_some());
        return;
    }
    stun_codec();
    Criterion::default().configure_from_args().final_summary();
}
