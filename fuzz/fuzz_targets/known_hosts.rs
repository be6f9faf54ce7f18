#![no_main]
//! `fleetup::fuzz::known_hosts` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fleetup::fuzz::known_hosts(data));
