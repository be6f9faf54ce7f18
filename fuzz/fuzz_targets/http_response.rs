#![no_main]
//! `fleetup::fuzz::http_response` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fleetup::fuzz::http_response(data));
