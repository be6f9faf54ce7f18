//! The SSH transport against real OpenSSH servers started for each test: commands and exit
//! statuses, channels in parallel, every host-key case, every auth method, timeouts, uploads,
//! HTTP through the node, and shell quoting through a real remote shell.

#[path = "common/sshd_fixture.rs"]
mod sshd_fixture;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleetup::lab::keys::KeyKind;
use fleetup::shell::quote;
use fleetup::ssh::{
    ConnectError, ConnectOptions, ExecError, ExecOptions, ExitStatus, HostKeyError, HostKeyPolicy,
    HttpError, KeyCache, Transport, UploadError, connect, connect_all, host_key_problems,
    upload_to_many,
};
use sshd_fixture::{Agent, Fixture, Server, fingerprint_of, host};

/// A fixture with one server whose keys are all in known_hosts.
fn one_server(extra_config: &[&str]) -> (Fixture, Server, std::path::PathBuf) {
    let fx = Fixture::new();
    let server = fx.server("node", &[], extra_config);
    let kh = fx.known_hosts("known_hosts", &server.known_hosts_lines());
    (fx, server, kh)
}

fn opts() -> ConnectOptions {
    ConnectOptions::default()
}

fn run_opts() -> ExecOptions {
    ExecOptions::default()
}

#[tokio::test]
async fn exec_reports_exit_codes_output_and_signals() {
    let (fx, server, kh) = one_server(&[]);
    let s = connect(&host("n1", server.port(), Some(&fx.key), &kh), &opts())
        .await
        .unwrap();

    let out = s
        .exec("echo out; echo err >&2; exit 3", &run_opts())
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(3));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert!(!out.status.success());

    let ok = s.exec("true", &run_opts()).await.unwrap();
    assert!(ok.status.success());

    let killed = s.exec("kill -TERM $$", &run_opts()).await.unwrap();
    assert_eq!(killed.status, ExitStatus::Signal("TERM".into()));

    let stdin = ExecOptions {
        stdin: Some(b"line one\nline two\n".to_vec()),
        ..run_opts()
    };
    let echoed = s.exec("cat; echo end", &stdin).await.unwrap();
    assert_eq!(echoed.stdout, b"line one\nline two\nend\n");

    let env = ExecOptions {
        env: vec![("FLEETUP_X".into(), "a 'b' $(c)".into())],
        ..run_opts()
    };
    let printed = s.exec("printf %s \"$FLEETUP_X\"", &env).await.unwrap();
    assert_eq!(printed.stdout, b"a 'b' $(c)");

    // A background job that keeps stdout open: the exit status still ends the command.
    let started = Instant::now();
    let bg = s
        .exec("sleep 20 & echo started", &run_opts())
        .await
        .unwrap();
    assert_eq!(
        (bg.status, bg.stdout.as_slice()),
        (ExitStatus::Code(0), b"started\n".as_slice())
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Output arrives through the callback as well as in the result.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let live = ExecOptions {
        on_output: Some(Arc::new(move |_, data: &[u8]| {
            sink.lock().unwrap().extend_from_slice(data)
        })),
        ..run_opts()
    };
    let streamed = s.exec("printf 'a\\nb\\n'", &live).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), streamed.stdout);
    assert_eq!(streamed.stdout, b"a\nb\n");
}

#[tokio::test]
async fn many_channels_share_one_connection_within_max_sessions() {
    // The server allows 3 channels per connection; 12 commands must all succeed because the
    // client never opens more than 3 at once, and they must overlap (not run one by one).
    let (fx, server, kh) = one_server(&["MaxSessions 3"]);
    let o = ConnectOptions {
        max_sessions: 3,
        ..opts()
    };
    let s = connect(&host("n1", server.port(), Some(&fx.key), &kh), &o)
        .await
        .unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.exec(&format!("sleep 1; echo {i}"), &ExecOptions::default())
                    .await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap().unwrap();
        assert_eq!(out.stdout_lossy(), format!("{i}\n"));
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "3 at a time means 4 rounds, took {took:?}"
    );
    assert!(
        took < Duration::from_secs(11),
        "channels did not overlap, took {took:?}"
    );
    assert_eq!(
        server.accepted_logins(),
        1,
        "one connection for every command"
    );
}

#[tokio::test]
async fn unknown_host_key_is_refused_before_anything_runs() {
    let fx = Fixture::new();
    let server = fx.server("node", &[], &[]);
    let other = fx.server("other", &[], &[]);
    // known_hosts knows another server only.
    let kh = fx.known_hosts("known_hosts", &other.known_hosts_lines());
    let marker = fx.path("marker");
    let h = host("ledger-1", server.port(), Some(&fx.key), &kh);
    let err = match connect(&h, &opts()).await {
        Ok(s) => {
            let _ = s
                .exec(
                    &format!("touch {}", quote(&marker.display().to_string())),
                    &run_opts(),
                )
                .await;
            panic!("an unknown host was accepted");
        }
        Err(e) => e,
    };
    assert!(!marker.exists());
    assert_eq!(
        server.accepted_logins(),
        0,
        "no login may happen on a refused host"
    );
    let Some(HostKeyError::Unknown {
        host,
        key_type,
        fingerprint,
        known_hosts,
        ..
    }) = err.host_key()
    else {
        panic!("expected an unknown host key, got {err}");
    };
    assert_eq!(host, "ledger-1");
    assert_eq!(key_type, "ssh-ed25519");
    assert_eq!(
        *fingerprint,
        fingerprint_of(&server.sshd.host_key_lines[0], fx.dir.path())
    );
    assert_eq!(*known_hosts, kh);
    let msg = err.to_string();
    assert!(
        msg.contains("`ledger-1`") && msg.contains(fingerprint.as_str()),
        "{msg}"
    );
    assert!(
        err.hints()
            .iter()
            .any(|h| h.contains("--accept-new-host-keys")),
        "{:?}",
        err.hints()
    );
    assert_eq!(err.to_failure().code, fleetup::exit_code::UNREACHABLE);
}

#[tokio::test]
async fn changed_host_key_is_refused_naming_file_and_line() {
    let fx = Fixture::new();
    let server = fx.server("node", &[], &[]);
    let impostor = fx.new_key("impostor", KeyKind::Ed25519, None);
    let impostor_line = fleetup::lab::keys::public_key_line(&impostor).unwrap();
    let kh = fx.known_hosts(
        "known_hosts",
        &[
            "# fleet hosts".into(),
            format!("[127.0.0.1]:{} {impostor_line}", server.port()),
        ],
    );
    let before = std::fs::read_to_string(&kh).unwrap();
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let o = ConnectOptions {
            host_keys: policy,
            ..opts()
        };
        let err = connect(&host("n1", server.port(), Some(&fx.key), &kh), &o)
            .await
            .unwrap_err();
        let Some(HostKeyError::Changed { line, .. }) = err.host_key() else {
            panic!("{err}")
        };
        assert_eq!(*line, 2);
        assert!(
            err.to_string().contains(&format!("{}:2", kh.display())),
            "{err}"
        );
        assert!(
            err.hints().iter().any(|h| h.contains("ssh-keygen -R")),
            "{:?}",
            err.hints()
        );
    }
    assert_eq!(
        std::fs::read_to_string(&kh).unwrap(),
        before,
        "a changed key is never recorded"
    );
    assert_eq!(server.accepted_logins(), 0);
}

#[tokio::test]
async fn revoked_host_key_is_refused_even_when_also_listed() {
    let (fx, server, _) = one_server(&[]);
    let mut lines = server.known_hosts_lines();
    lines.push(format!("@revoked * {}", server.sshd.host_key_lines[0]));
    let kh = fx.known_hosts("kh_revoked", &lines);
    let err = connect(&host("n1", server.port(), Some(&fx.key), &kh), &opts())
        .await
        .unwrap_err();
    assert!(
        matches!(err.host_key(), Some(HostKeyError::Revoked { line: 3, .. })),
        "{err}"
    );
}

#[tokio::test]
async fn hashed_entries_and_rsa_only_entries_are_accepted() {
    let (fx, server, kh) = one_server(&[]);
    let st = std::process::Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&kh)
        .output()
        .unwrap();
    assert!(st.status.success());
    let text = std::fs::read_to_string(&kh).unwrap();
    assert!(
        text.starts_with("|1|") && !text.contains("127.0.0.1"),
        "{text}"
    );
    let s = connect(&host("n1", server.port(), Some(&fx.key), &kh), &opts())
        .await
        .unwrap();
    assert!(s.exec("true", &run_opts()).await.unwrap().status.success());

    // Only the RSA host key recorded: the client must ask for RSA and accept it.
    let rsa_only = fx.known_hosts("kh_rsa", &server.known_hosts_lines()[1..]);
    assert!(
        std::fs::read_to_string(&rsa_only)
            .unwrap()
            .contains("ssh-rsa")
    );
    let s = connect(
        &host("n1", server.port(), Some(&fx.key), &rsa_only),
        &opts(),
    )
    .await
    .unwrap();
    assert!(s.exec("true", &run_opts()).await.unwrap().status.success());
}

#[tokio::test]
async fn accept_new_records_the_key_then_strict_connects() {
    let fx = Fixture::new();
    let server = fx.server("node", &[], &[]);
    let kh = fx.path("sub/known_hosts");
    let h = host("n1", server.port(), Some(&fx.key), &kh);
    assert!(connect(&h, &opts()).await.unwrap_err().host_key().is_some());

    let accept = ConnectOptions {
        host_keys: HostKeyPolicy::AcceptNew,
        ..opts()
    };
    // Two connections at once to the same host record it once.
    let (a, b) = tokio::join!(connect(&h, &accept), connect(&h, &accept));
    a.unwrap();
    b.unwrap();
    let text = std::fs::read_to_string(&kh).unwrap();
    assert_eq!(text, format!("{}\n", server.known_hosts_lines()[0]));

    let s = connect(&h, &opts()).await.unwrap();
    assert!(s.exec("true", &run_opts()).await.unwrap().status.success());
}

#[tokio::test]
async fn accept_new_refuses_a_host_known_with_another_key_type() {
    let fx = Fixture::new();
    let server = fx.server("node", &[], &[]);
    // Record an ECDSA-typed entry: the server has no ECDSA key, so it presents another type.
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
        .arg(fx.path("ecdsa_key"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let ecdsa_line = fleetup::lab::keys::public_key_line(&fx.path("ecdsa_key")).unwrap();
    let kh = fx.known_hosts(
        "known_hosts",
        &[format!("[127.0.0.1]:{} {ecdsa_line}", server.port())],
    );
    let before = std::fs::read_to_string(&kh).unwrap();
    let accept = ConnectOptions {
        host_keys: HostKeyPolicy::AcceptNew,
        ..opts()
    };
    let err = connect(&host("n1", server.port(), Some(&fx.key), &kh), &accept)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.host_key(),
            Some(HostKeyError::OtherTypeKnown { line: 1, .. })
        ),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), before);
}

#[tokio::test]
async fn connect_all_reports_every_host_key_problem_together() {
    let fx = Fixture::new();
    let good = fx.server("good", &[], &[]);
    let stranger1 = fx.server("s1", &[], &[]);
    let stranger2 = fx.server("s2", &[], &[]);
    let kh = fx.known_hosts("known_hosts", &good.known_hosts_lines());
    let hosts = vec![
        host("good", good.port(), Some(&fx.key), &kh),
        host("s1", stranger1.port(), Some(&fx.key), &kh),
        host("s2", stranger2.port(), Some(&fx.key), &kh),
    ];
    let results = connect_all(&hosts, &opts()).await;
    let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["good", "s1", "s2"]);
    assert!(results[0].1.is_ok());
    let problems = host_key_problems(&results);
    let bad: Vec<&str> = problems.iter().map(|(n, _)| *n).collect();
    assert_eq!(bad, ["s1", "s2"]);
}

#[tokio::test]
async fn agent_keys_authenticate() {
    let fx = Fixture::new();
    let agent_key = fx.new_key("agent_key", KeyKind::Ed25519, None);
    let server = fx.server("node", &[&agent_key], &[]);
    let kh = fx.known_hosts("known_hosts", &server.known_hosts_lines());
    let agent = Agent::start(fx.dir.path());
    agent.add(&agent_key);
    let mut h = host("n1", server.port(), None, &kh);
    h.ssh.use_agent = true;
    let o = ConnectOptions {
        agent_socket: Some(agent.socket.clone()),
        ..opts()
    };
    let s = connect(&h, &o).await.unwrap();
    assert!(s.exec("true", &run_opts()).await.unwrap().status.success());

    // Without the agent and without key files there is nothing to offer: a clear auth error.
    h.ssh.use_agent = false;
    let err = connect(&h, &o).await.unwrap_err();
    assert!(matches!(err, ConnectError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("no key available"), "{err}");
}

#[tokio::test]
async fn encrypted_key_is_decrypted_once_and_a_wrong_passphrase_is_clear() {
    let fx = Fixture::new();
    let enc = fx.new_key("id_enc", KeyKind::Ed25519, Some("correct horse"));
    let servers: Vec<Server> = (0..3)
        .map(|i| fx.server(&format!("n{i}"), &[&enc], &[]))
        .collect();
    let lines: Vec<String> = servers.iter().flat_map(|s| s.known_hosts_lines()).collect();
    let kh = fx.known_hosts("known_hosts", &lines);
    let hosts: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut h = host(&format!("n{i}"), s.port(), Some(&enc), &kh);
            h.ssh.connect_timeout = Duration::from_secs(1);
            h
        })
        .collect();

    // An operator slower to type than the connect timeout must not make hosts time out.
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let prompt: fleetup::ssh::PassphrasePrompt = Arc::new(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1500));
        Some("correct horse".into())
    });
    let o = ConnectOptions {
        keys: KeyCache::with_passphrase(None, Some(prompt)),
        ..opts()
    };
    for (name, r) in connect_all(&hosts, &o).await {
        assert!(r.is_ok(), "{name}: {:?}", r.err());
    }
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "the key is decrypted once per run"
    );

    let o = ConnectOptions {
        keys: KeyCache::with_passphrase(Some("wrong".into()), None),
        ..opts()
    };
    let err = connect(&hosts[0], &o).await.unwrap_err();
    assert!(matches!(err, ConnectError::Key { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("id_enc")
            && msg.contains("wrong passphrase")
            && msg.contains("FLEETUP_KEY_PASSPHRASE"),
        "{msg}"
    );

    let err = connect(&hosts[0], &opts()).await.unwrap_err();
    assert!(
        err.to_string().contains("no passphrase is available"),
        "{err}"
    );
}

#[tokio::test]
async fn rsa_keys_authenticate_with_sha2() {
    let fx = Fixture::new();
    let rsa = fx.new_key("id_rsa", KeyKind::Rsa(3072), None);
    // The server refuses SHA-1 signatures outright.
    let server = fx.server(
        "node",
        &[&rsa],
        &["PubkeyAcceptedAlgorithms rsa-sha2-512,rsa-sha2-256"],
    );
    let kh = fx.known_hosts("known_hosts", &server.known_hosts_lines());
    let s = connect(&host("n1", server.port(), Some(&rsa), &kh), &opts())
        .await
        .unwrap();
    assert!(s.exec("true", &run_opts()).await.unwrap().status.success());
    assert!(
        server.log().contains("Accepted publickey") && server.log().contains("RSA SHA256:"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn unreachable_hosts_fail_within_the_connect_timeout_while_others_work() {
    let (fx, server, kh) = one_server(&[]);
    let closed_port = fleetup::lab::sshd::free_port().unwrap();
    // Accepts TCP connections but never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let mut hosts = vec![
        host("up", server.port(), Some(&fx.key), &kh),
        host("closed", closed_port, Some(&fx.key), &kh),
        host("silent", silent_port, Some(&fx.key), &kh),
    ];
    for h in &mut hosts {
        h.ssh.connect_timeout = Duration::from_secs(2);
    }
    let started = Instant::now();
    let results = connect_all(&hosts, &opts()).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(results[0].1.is_ok());
    assert!(
        matches!(results[1].1, Err(ConnectError::Tcp { .. })),
        "{:?}",
        results[1].1.as_ref().err()
    );
    let Err(ConnectError::Timeout { stage, .. }) = &results[2].1 else {
        panic!("{:?}", results[2].1.as_ref().err())
    };
    assert!(stage.contains("banner"), "{stage}");
    let msg = results[2].1.as_ref().unwrap_err().to_string();
    assert!(msg.contains("`silent`") && msg.contains("2s"), "{msg}");
    drop(silent);
}

/// A front for `sshd` that sheds every other new connection exactly as sshd does past its
/// `MaxStartups` (it writes `Exceeded MaxStartups` and closes), and relays the others.
fn shedding_front(sshd_port: u16) -> (u16, Arc<AtomicUsize>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let shed = Arc::new(AtomicUsize::new(0));
    let counter = shed.clone();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(mut client) = conn else { return };
            if i % 2 == 0 {
                let _ = client.write_all(b"Exceeded MaxStartups\r\n");
                counter.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let server = std::net::TcpStream::connect(("127.0.0.1", sshd_port)).unwrap();
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(std::net::Shutdown::Write);
            });
            let mut server = server;
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, shed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_a_loaded_sshd_drops_past_max_startups_are_made_again() {
    let fx = Fixture::new();
    let server = fx.server("node", &[], &[]);
    let (front, shed) = shedding_front(server.port());
    let lines: Vec<String> = server
        .sshd
        .host_key_lines
        .iter()
        .map(|k| format!("[127.0.0.1]:{front} {k}"))
        .collect();
    let kh = fx.known_hosts("known_hosts", &lines);
    let hosts: Vec<_> = (1..=12)
        .map(|i| host(&format!("h{i}"), front, Some(&fx.key), &kh))
        .collect();
    let results = connect_all(&hosts, &opts()).await;
    for (name, r) in &results {
        r.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Every host got in, each after at least one shed attempt on average.
    assert_eq!(server.accepted_logins(), 12);
    assert!(shed.load(Ordering::SeqCst) >= 12, "{shed:?}");
}

#[tokio::test]
async fn a_silent_command_longer_than_keepalive_finishes() {
    let (fx, server, kh) = one_server(&[]);
    let o = ConnectOptions {
        keepalive: Duration::from_millis(500),
        inactivity_timeout: Duration::from_secs(2),
        ..opts()
    };
    let s = connect(&host("n1", server.port(), Some(&fx.key), &kh), &o)
        .await
        .unwrap();
    let out = s.exec("sleep 4; echo done", &run_opts()).await.unwrap();
    assert_eq!(
        (out.status, out.stdout.as_slice()),
        (ExitStatus::Code(0), b"done\n".as_slice())
    );
    assert!(out.duration >= Duration::from_secs(4));
}

/// Every process below `pid` (the server's per-connection processes below its listener).
fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(parent) {
                all.push(child);
                frontier.push(child);
            }
        }
    }
    all
}

fn signal_all(pids: &[u32], sig: libc::c_int) {
    for &p in pids {
        // SAFETY: kill(2) on processes of the sshd this test started.
        unsafe {
            libc::kill(p as libc::pid_t, sig);
        }
    }
}

#[tokio::test]
async fn a_connection_that_dies_mid_command_is_an_error_not_success() {
    let (fx, server, kh) = one_server(&[]);
    let o = ConnectOptions {
        keepalive: Duration::from_millis(300),
        inactivity_timeout: Duration::from_secs(1),
        ..opts()
    };
    let s = connect(&host("n1", server.port(), Some(&fx.key), &kh), &o)
        .await
        .unwrap();
    let running = tokio::spawn({
        let s = s.clone();
        async move {
            s.exec("sleep 5; echo finished", &ExecOptions::default())
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Freeze the server side of the connection: no more answers, no exit status.
    let frozen = descendants(server.sshd.pid);
    assert!(!frozen.is_empty());
    signal_all(&frozen, libc::SIGSTOP);
    let started = Instant::now();
    let result = running.await.unwrap();
    signal_all(&frozen, libc::SIGCONT);
    let err = result.unwrap_err();
    assert!(matches!(err, ExecError::Lost { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("without an exit status"), "{err}");
}

#[tokio::test]
async fn command_timeout_fires_and_the_connection_stays_usable() {
    let (fx, server, kh) = one_server(&[]);
    let mut h = host("n1", server.port(), Some(&fx.key), &kh);
    // 3 s: the shell must have printed before the deadline even on a loaded CI machine (with
    // 1 s, a busy machine once had not run the `echo` yet).
    h.ssh.command_timeout = Duration::from_secs(3);
    let s = connect(&h, &opts()).await.unwrap();
    let started = Instant::now();
    let err = s
        .exec("echo partial; sleep 30", &run_opts())
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let ExecError::Timeout { stdout, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(stdout, b"partial\n");
    assert!(err.to_string().contains("3s"), "{err}");
    let out = s.exec("echo still here", &run_opts()).await.unwrap();
    assert_eq!(out.stdout, b"still here\n");
}

#[tokio::test]
async fn a_timed_out_command_is_ended_on_the_host_too() {
    // The fixture logs in as the test's user; as root, OpenSSH refuses our TERM request, so only
    // the host-side deadline can end the command.
    let (fx, server, kh) = one_server(&[]);
    let mut h = host("n1", server.port(), Some(&fx.key), &kh);
    h.ssh.command_timeout = Duration::from_secs(3);
    let s = connect(&h, &opts()).await.unwrap();
    let pidfile = fx.path("sleeper.pid");
    let cmd = format!("sh -c 'echo $$ > {}; exec sleep 60'", pidfile.display());
    let err = s.exec(&cmd, &run_opts()).await.unwrap_err();
    assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !alive(pid),
        "the command (pid {pid}) still runs on the host after its deadline"
    );
}

#[tokio::test]
async fn upload_is_atomic_and_verified_on_the_host() {
    let fx = Fixture::new();
    let a = fx.server("a", &[], &[]);
    let b = fx.server("b", &[], &[]);
    let lines: Vec<String> = a
        .known_hosts_lines()
        .into_iter()
        .chain(b.known_hosts_lines())
        .collect();
    let kh = fx.known_hosts("known_hosts", &lines);
    let local = fx.path("payload.bin");
    let data: Vec<u8> = (0..5 * 1024 * 1024 + 123)
        .map(|_| rand::random::<u8>())
        .collect();
    std::fs::write(&local, &data).unwrap();
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    let remote_dir = fx.path("remote dir; $(x)");
    std::fs::create_dir(&remote_dir).unwrap();
    let remote = remote_dir.join("numary");
    let remote_s = remote.display().to_string();

    let sa = connect(&host("a", a.port(), Some(&fx.key), &kh), &opts())
        .await
        .unwrap();
    let last = Arc::new(std::sync::Mutex::new((0, 0)));
    let l = last.clone();
    let report = sa
        .upload(&local, &remote_s, 0o750, move |done, total| {
            *l.lock().unwrap() = (done, total)
        })
        .await
        .unwrap();
    assert_eq!(report.sha256, want);
    assert_eq!(report.bytes, data.len() as u64);
    assert_eq!(
        *last.lock().unwrap(),
        (data.len() as u64, data.len() as u64)
    );
    assert_eq!(std::fs::read(&remote).unwrap(), data);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&remote).unwrap().permissions().mode() & 0o777,
        0o750
    );
    let leftovers: Vec<_> = std::fs::read_dir(&remote_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // A digest that does not match: nothing replaces the destination, no temp file is left.
    let bad = Transport::upload(&sa, b"other bytes", &want, &remote_s, 0o755, &|_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(bad, UploadError::Checksum { .. }), "{bad}");
    assert_eq!(std::fs::read(&remote).unwrap(), data);
    assert_eq!(std::fs::read_dir(&remote_dir).unwrap().count(), 1);

    // To many hosts at once from one read of the file.
    let sb = connect(&host("b", b.port(), Some(&fx.key), &kh), &opts())
        .await
        .unwrap();
    let remote2 = fx.path("copy2").display().to_string();
    let results = upload_to_many(
        &[sa, sb],
        &local,
        &remote2,
        0o644,
        2,
        Arc::new(|_, _, _| {}),
    )
    .await
    .unwrap();
    assert_eq!(results.len(), 2);
    for (name, r) in results {
        assert_eq!(r.unwrap_or_else(|e| panic!("{name}: {e}")).sha256, want);
    }
    assert_eq!(std::fs::read(fx.path("copy2")).unwrap(), data);

    // An unwritable destination dir fails cleanly.
    let s = connect(&host("a", a.port(), Some(&fx.key), &kh), &opts())
        .await
        .unwrap();
    let err = s
        .upload(&local, "/nonexistent-dir/x", 0o644, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, UploadError::Remote { .. }), "{err}");
}

#[tokio::test]
async fn http_get_goes_through_the_node() {
    let (fx, server, kh) = one_server(&[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen_request = Arc::new(tokio::sync::Mutex::new(String::new()));
    let seen = seen_request.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let json = "{\"data\":{\"version\":\"1.8.2\"}}";
        let first = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        let second = "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
                      5\r\nnot r\r\n4\r\neady\r\n0\r\n\r\n"
            .to_owned();
        for answer in [first, second] {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap();
            *seen.lock().await = String::from_utf8_lossy(&buf[..n]).into_owned();
            sock.write_all(answer.as_bytes()).await.unwrap();
            // Keep the socket open: the client must stop at Content-Length / the last chunk.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                drop(sock);
            });
        }
    });
    let s = connect(&host("n1", server.port(), Some(&fx.key), &kh), &opts())
        .await
        .unwrap();
    let started = Instant::now();
    let r = s
        .http_get("127.0.0.1", port, "/_info", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"{\"data\":{\"version\":\"1.8.2\"}}");
    let req = seen_request.lock().await.clone();
    assert!(
        req.starts_with("GET /_info HTTP/1.1\r\n") && req.contains("Connection: close"),
        "{req}"
    );

    let r = s
        .http_get("127.0.0.1", port, "/_health", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.body.as_slice()),
        (503, b"not ready".as_slice())
    );

    let closed = fleetup::lab::sshd::free_port().unwrap();
    let err = s
        .http_get("127.0.0.1", closed, "/_info", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, HttpError::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{closed}")),
        "{err}"
    );
}

#[tokio::test]
async fn hostile_values_round_trip_through_the_remote_shell() {
    let (fx, server, kh) = one_server(&[]);
    let s = connect(&host("n1", server.port(), Some(&fx.key), &kh), &opts())
        .await
        .unwrap();
    let hostile = [
        "",
        "two  spaces",
        "it's",
        "\"double\"",
        "$(touch /tmp/fleetup-pwned)",
        "`id`",
        "a; echo injected",
        "line\nbreak",
        "tab\there",
        "back\\slash",
        "grüße ✓",
        "*",
        "-n",
        "$HOME ${PATH} !! ~",
    ];
    for value in hostile {
        let out = s
            .exec(&format!("printf %s {}", quote(value)), &run_opts())
            .await
            .unwrap();
        assert!(out.status.success(), "{value:?}: {}", out.stderr_lossy());
        assert_eq!(out.stdout, value.as_bytes(), "{value:?}");
    }
    assert!(!std::path::Path::new("/tmp/fleetup-pwned").exists());
}

#[tokio::test]
async fn jump_host_tunnels_to_the_target_and_checks_both_keys() {
    let fx = Fixture::new();
    let bastion = fx.server("bastion", &[], &[]);
    let target = fx.server("target", &[], &[]);
    let lines: Vec<String> = bastion
        .known_hosts_lines()
        .into_iter()
        .chain(target.known_hosts_lines())
        .collect();
    let kh = fx.known_hosts("known_hosts", &lines);
    let mut h = host("behind", target.port(), Some(&fx.key), &kh);
    h.ssh.jump_host = Some(format!(
        "{}@127.0.0.1:{}",
        sshd_fixture::user(),
        bastion.port()
    ));
    let s = connect(&h, &opts()).await.unwrap();
    let out = s.exec("echo via jump", &run_opts()).await.unwrap();
    assert_eq!(out.stdout, b"via jump\n");
    assert_eq!(bastion.accepted_logins(), 1);
    assert_eq!(target.accepted_logins(), 1);

    // The bastion's own key is checked too.
    let only_target = fx.known_hosts("kh_target", &target.known_hosts_lines());
    h.ssh.known_hosts = only_target;
    let err = connect(&h, &opts()).await.unwrap_err();
    let Some(HostKeyError::Unknown { addr, .. }) = err.host_key() else {
        panic!("{err}")
    };
    assert_eq!(*addr, format!("[127.0.0.1]:{}", bastion.port()));
}

#[tokio::test]
async fn output_without_end_is_capped_to_its_last_mebibyte() {
    let (fx, server, kh) = one_server(&[]);
    let s = connect(&host("n1", server.port(), Some(&fx.key), &kh), &opts())
        .await
        .unwrap();
    let total = 3 * fleetup::ssh::OUTPUT_CAP + 12345;
    // The marker is the last thing printed: the kept part is the newest.
    let cmd = format!("head -c {total} /dev/zero; printf END; head -c 100 /dev/zero >&2");
    let out = s.exec(&cmd, &run_opts()).await.unwrap();
    assert_eq!(out.stdout.len(), fleetup::ssh::OUTPUT_CAP);
    assert!(out.stdout.ends_with(b"END"));
    assert_eq!(out.stderr.len(), 100);
    assert_eq!(out.truncated, (total + 3 - fleetup::ssh::OUTPUT_CAP) as u64);
}

#[tokio::test]
async fn a_command_ignoring_term_is_killed_by_the_host_before_fleetup_gives_up() {
    let (fx, server, kh) = one_server(&[]);
    let mut h = host("n1", server.port(), Some(&fx.key), &kh);
    h.ssh.command_timeout = Duration::from_secs(2);
    let s = connect(&h, &opts()).await.unwrap();
    let started = Instant::now();
    let err = s
        .exec("trap '' TERM; sleep 20", &run_opts())
        .await
        .unwrap_err();
    let took = started.elapsed();
    let ExecError::Timeout { ended_by_host, .. } = &err else {
        panic!("{err}")
    };
    // TERM at 2 s is ignored, KILL 3 s later: the host reports the end before fleetup's own
    // deadline (2 + 5 s) would fire.
    assert!(*ended_by_host, "{err}");
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(7),
        "{took:?}"
    );
    assert!(err.to_string().contains("the host ended it"), "{err}");
}
