#![no_main]
//! `fleetup::fuzz::numary_output` under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fleetup::fuzz::numary_output(data));
