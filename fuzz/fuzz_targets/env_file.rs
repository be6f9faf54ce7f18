#![no_main]
//! `fleetup::fuzz::env_file` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fleetup::fuzz::env_file(data));
