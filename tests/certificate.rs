//! User certificates (ssh_config's `CertificateFile`, or an identity file's own `FILE-cert.pub`):
//! a real sshd that trusts only a user CA lets fleetup in with a certified key that is in no
//! authorized_keys, and refuses the same key without its certificate.

#[path = "common/sshd_fixture.rs"]
mod sshd_fixture;

use std::process::Command;

use fleetup::lab::keys::KeyKind;
use fleetup::ssh::{ConnectError, ConnectOptions, ExecOptions, connect};
use sshd_fixture::{Fixture, host, user};

#[tokio::test]
async fn a_certified_key_logs_in_through_its_certificate_only() {
    let fx = Fixture::new();
    let ca = fx.new_key("user_ca", KeyKind::Ed25519, None);
    let key = fx.new_key("certified", KeyKind::Ed25519, None);
    // Signed for the test's user; the key itself is in no authorized_keys.
    let signed = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca)
        .args(["-I", "fleetup-test", "-n", &user(), "-V", "-5m:+1h"])
        .arg(fx.path("certified.pub"))
        .status()
        .unwrap();
    assert!(signed.success());
    let cert = fx.path("certified-cert.pub");
    assert!(cert.is_file());
    let trusted = format!("TrustedUserCAKeys {}", fx.path("user_ca.pub").display());
    let server = fx.server("node", &[], &[trusted.as_str()]);
    let kh = fx.known_hosts("known_hosts", &server.known_hosts_lines());

    // The configured CertificateFile, kept elsewhere than beside the key.
    let elsewhere = fx.path("cert-from-ssh-config.pub");
    std::fs::rename(&cert, &elsewhere).unwrap();
    let mut h = host("n1", server.port(), Some(&key), &kh);
    h.ssh.use_agent = false;
    let refused = connect(&h, &ConnectOptions::default()).await.unwrap_err();
    assert!(matches!(refused, ConnectError::Auth { .. }), "{refused}");

    h.ssh.openssh.certificate_file = Some(elsewhere.clone());
    let s = connect(&h, &ConnectOptions::default()).await.unwrap();
    let out = s.exec("echo in", &ExecOptions::default()).await.unwrap();
    assert_eq!(out.stdout, b"in\n");
    assert!(
        server.log().contains("Accepted publickey") && server.log().contains("ED25519-CERT"),
        "the server accepted the certificate:\n{}",
        server.log()
    );

    // OpenSSH's implicit `FILE-cert.pub` works without any CertificateFile.
    std::fs::rename(&elsewhere, &cert).unwrap();
    h.ssh.openssh.certificate_file = None;
    let s = connect(&h, &ConnectOptions::default()).await.unwrap();
    assert!(
        s.exec("true", &ExecOptions::default())
            .await
            .unwrap()
            .status
            .success()
    );
}
