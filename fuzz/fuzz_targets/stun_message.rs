#![no_main]
//! Message::parse, every accessor, every attribute decoded and re-encoded, every verifier.

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::stun(data));
