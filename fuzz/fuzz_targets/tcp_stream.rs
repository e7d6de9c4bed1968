#![no_main]
//! TURN-over-TCP framing: the bytes are cut into reads of fuzzer-chosen sizes and fed to
//! the client's `StreamDecoder`; the frames it yields must be exactly those that
//! `stun::stream::frame_len` finds walking the whole stream, and each frame must go
//! through the parsers without panicking.

use icering::stun::{ChannelData, Message, stream::frame_len};
use icering::turn::client::stream::StreamDecoder;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    // Reference: walk the whole stream at once.
    let mut want: Vec<&[u8]> = Vec::new();
    let mut rest = stream;
    let mut broken = false;
    loop {
        match frame_len(rest) {
            Ok(Some(n)) => {
                assert!(n >= 4 && n <= rest.len());
                want.push(&rest[..n]);
                rest = &rest[n..];
            }
            Ok(None) => break,
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    // Decoder fed in reads of 1..=cut+1 bytes (varying).
    let mut d = StreamDecoder::default();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut errored = false;
    let mut at = 0;
    let mut k = usize::from(cut);
    'feed: while at < stream.len() {
        let step = 1 + (k % (usize::from(cut) + 1));
        k = k.wrapping_mul(31).wrapping_add(7);
        let end = (at + step).min(stream.len());
        d.push(&stream[at..end]);
        at = end;
        while let Some(f) = d.next_frame() {
            match f {
                Ok(f) => got.push(f.to_vec()),
                Err(_) => {
                    errored = true;
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(&g[..], *w);
        let _ = Message::parse(g);
        let _ = ChannelData::parse_udp(g);
    }
    // The decoder refuses exactly where the walk did (the decoder's 64 KiB cap never
    // binds: a STUN or ChannelData header cannot declare more).
    assert_eq!(errored, broken);
});
