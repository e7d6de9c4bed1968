#![no_main]
//! ChannelData::parse_udp and ::parse_stream.

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::channel_data(data));
