#![no_main]
//! `fleetup::fuzz::terminal` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fleetup::fuzz::terminal(data));
