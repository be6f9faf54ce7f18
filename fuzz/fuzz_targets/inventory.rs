#![no_main]
//! `fleetup::fuzz::inventory` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fleetup::fuzz::inventory(data));
