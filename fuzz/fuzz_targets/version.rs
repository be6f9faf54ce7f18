#![no_main]
//! `fleetup::fuzz::version` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fleetup::fuzz::version(data));
