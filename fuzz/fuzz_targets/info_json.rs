#![no_main]
//! `fleetup::fuzz::info_json` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fleetup::fuzz::info_json(data));
