//! The bounded fuzz run of CI: every harness of `fleetup::fuzz` (the cargo-fuzz targets of
//! `fuzz/` call the same functions) gets its committed corpus (`fuzz/corpus/TARGET/`), any
//! saved failing input (`fuzz/artifacts/TARGET/`), and a fixed number of generated inputs from
//! a fixed seed: random bytes, and inputs built from the tokens each parser cares about. A
//! harness asserts what must hold whatever the input; a panic is a failure naming the input.
//! `scripts/fuzz.sh` runs the real fuzzers for a set time.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Generated inputs per harness and generator.
const CASES: u32 = 3000;

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn runner() -> TestRunner {
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

/// Runs `f` on `input`, turning a panic into a failure that shows the input.
fn run(name: &str, f: fleetup::fuzz::Harness, input: &[u8]) -> Result<(), TestCaseError> {
    std::panic::catch_unwind(|| f(input)).map_err(|e| {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        TestCaseError::fail(format!(
            "{name} panicked ({why}) on {:?}",
            String::from_utf8_lossy(input)
        ))
    })
}

/// Lines built from `tokens`, joined by the separators a format uses.
fn built(tokens: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(tokens), 0..40)
        .prop_map(|parts| parts.concat().into_bytes())
}

const HTTP: &[&str] = &[
    "HTTP/1.1 200 OK\r\n",
    "HTTP/1.0 503 x\r\n",
    "Transfer-Encoding: chunked\r\n",
    "Content-Length: 5\r\n",
    "Content-Length: 18446744073709551616\r\n",
    "\r\n",
    "0\r\n",
    "4\r\nWiki\r\n",
    "ffffffffffffffff\r\n",
    "7fffffffffffffff;x=y\r\n",
    "10000000\r\n",
    "abc",
    "\x1b]0;t\x07",
    ":",
];

const ENV: &[&str] = &[
    "A=", "B_1=", "export ", "#", ";", " ", "\t", "'", "\"", "\\", "\n", "\r\n", "$", "$(id)", "`",
    "~", "=", "value", ";x", "&", "|",
];

const TOML: &[&str] = &[
    "[[host]]\n",
    "[host]\n",
    "[ssh]\n",
    "[ledger]\n",
    "[groups.eu]\n",
    "name = \"a\"\n",
    "address = \"10.0.0.1\"\n",
    "groups = [\"eu\"]\n",
    "port = 0\n",
    "port = 70000\n",
    "command_timeout = \"1m\"\n",
    "migration_timeout = \"x\"\n",
    "jump_host = \"a,b@c:22\"\n",
    "ledgers = []\n",
    "env_file = \"/etc/x\"\n",
    "become = \"sudo\"\n",
    "replaces = \"a\"\n",
    "ssh_config = \"none\"\n",
    "\"\n",
];

const NUMARY: &[&str] = &[
    "Ledgers:\n",
    "No ledger found.\n",
    "- default\n",
    "- foo \n",
    "- \n",
    "Version: ",
    "1.8.2",
    "v1.10.16 \r\n",
    "Storage 'default' migrated\r\n",
    "Ledger 'a' registered\n",
    "Error registering ledger '",
    "time=\"x\" level=info\n",
    "\n",
];

#[test]
fn every_harness_survives_its_corpus_and_generated_inputs() {
    let mut replayed = 0;
    for (name, f) in fleetup::fuzz::TARGETS {
        let corpus = files(&dir("corpus", name));
        assert!(!corpus.is_empty(), "no seed corpus for `{name}`");
        for path in corpus.iter().chain(&files(&dir("artifacts", name))) {
            let input = std::fs::read(path).unwrap();
            if let Err(e) = run(name, f, &input) {
                panic!("{}: {e}", path.display());
            }
            replayed += 1;
        }
        let mut r = runner();
        r.run(&prop::collection::vec(any::<u8>(), 0..2048), |input| {
            run(name, f, &input)
        })
        .unwrap_or_else(|e| panic!("{name}, random bytes: {e}"));
        let tokens: Option<&'static [&'static str]> = match name {
            "http_response" => Some(HTTP),
            "env_file" => Some(ENV),
            "inventory" => Some(TOML),
            "numary_output" | "version" => Some(NUMARY),
            "terminal" => Some(ENV),
            _ => None,
        };
        if let Some(tokens) = tokens {
            runner()
                .run(&built(tokens), |input| run(name, f, &input))
                .unwrap_or_else(|e| panic!("{name}, built inputs: {e}"));
        }
    }
    assert!(replayed >= 8, "{replayed} corpus files");
}
