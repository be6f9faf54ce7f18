//! How ssh_config feeds the inventory: it fills only what the inventory leaves unset, resolves
//! aliases and jump chains hop by hop, and never weakens host-key checking.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn local(home: &Path) -> LocalEnv {
    LocalEnv {
        home: Some(home.to_path_buf()),
        user: "op".into(),
        default_identity_files: vec![home.join(".ssh/id_ed25519")],
    }
}

/// `config` as `HOME/.ssh/config`, then `inventory` parsed with `overrides`.
fn resolve(
    config: &str,
    inventory: &str,
    overrides: &Overrides,
) -> (tempfile::TempDir, Result<Inventory, Failure>) {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    std::fs::write(home.path().join(".ssh/config"), config).unwrap();
    let inv = Inventory::parse(
        inventory,
        &home.path().join("inv.toml"),
        overrides,
        &local(home.path()),
    );
    (home, inv)
}

const CONFIG: &str = "\
Host lab3
  HostName 127.0.0.1
  Port 2201
  User labuser
  IdentityFile ~/.ssh/lab_%r
  IdentitiesOnly yes
  CertificateFile ~/.ssh/lab-cert.pub
  ServerAliveInterval 5
  ConnectTimeout 3
  StrictHostKeyChecking no
Host inner-* !inner-direct
  ProxyJump bastion-1,ops@bastion-2:2022
Host bastion-1
  HostName 10.0.0.1
  Port 2200
  User jumper
  IdentityFile ~/.ssh/jump1
  UserKnownHostsFile ~/.ssh/kh_bastion1
Host bastion-2
  HostName 10.0.0.2
  User ignored-because-the-hop-says-ops
  StrictHostKeyChecking yes
Host *
  User fallback
  UserKnownHostsFile ~/.ssh/kh_%h
";

fn host(name: &str, address: &str, extra: &str) -> String {
    format!("[[host]]\nname = \"{name}\"\naddress = \"{address}\"\n{extra}")
}

#[test]
fn an_alias_address_connects_where_its_host_block_says() {
    let (home, inv) = resolve(CONFIG, &host("a", "lab3", ""), &Overrides::default());
    let h = &inv.unwrap().hosts()[0].clone();
    let home = home.path();
    assert_eq!(h.address, "127.0.0.1");
    assert_eq!(h.ssh.openssh.alias.as_deref(), Some("lab3"));
    assert_eq!((h.ssh.user.as_str(), h.ssh.port), ("labuser", 2201));
    assert_eq!(
        h.ssh.identity_files,
        [home.join(".ssh/lab_labuser")],
        "%r is the remote user"
    );
    assert_eq!(
        h.ssh.known_hosts,
        home.join(".ssh/kh_127.0.0.1"),
        "%h is the HostName"
    );
    assert_eq!(h.ssh.connect_timeout, Duration::from_secs(3));
    assert!(h.ssh.openssh.identities_only);
    assert_eq!(
        h.ssh.openssh.certificate_file,
        Some(home.join(".ssh/lab-cert.pub"))
    );
    assert_eq!(
        h.ssh.openssh.server_alive_interval,
        Some(Duration::from_secs(5))
    );
    assert!(!h.ssh.openssh.strict_host_key_checking);
    let from = &h.ssh.openssh.origins;
    assert!(from["address"].contains("(Host lab3)"), "{from:?}");
    assert!(from["user"].contains("(Host lab3)"), "{from:?}");
    assert_eq!(from["connect_timeout"], from["port"]);
}

#[test]
fn the_inventory_beats_ssh_config_for_every_key_it_sets() {
    let inv = host(
        "a",
        "lab3",
        "user = \"inv-user\"\nport = 22\n[host.ssh]\nidentity_files = [\"/k\"]\n\
         known_hosts = \"/kh\"\nconnect_timeout = \"9s\"\njump_host = \"none\"\n",
    );
    let (_home, resolved) = resolve(CONFIG, &inv, &Overrides::default());
    let h = &resolved.unwrap().hosts()[0].clone();
    assert_eq!(h.address, "127.0.0.1", "HostName still resolves the alias");
    assert_eq!((h.ssh.user.as_str(), h.ssh.port), ("inv-user", 22));
    assert_eq!(h.ssh.identity_files, [PathBuf::from("/k")]);
    assert_eq!(h.ssh.known_hosts, PathBuf::from("/kh"));
    assert_eq!(h.ssh.connect_timeout, Duration::from_secs(9));
    assert_eq!(h.ssh.openssh.origins["user"], "[[host]] `a`");

    // `[ssh]` and groups beat it too, and a flag beats everything.
    let inv = format!(
        "[ssh]\nuser = \"fleet\"\n[groups.g.ssh]\nport = 2300\n{}",
        host("a", "lab3", "groups = [\"g\"]\n")
    );
    let flags = Overrides {
        connect_timeout: Some(Duration::from_secs(1)),
        ..Overrides::default()
    };
    let (_home, resolved) = resolve(CONFIG, &inv, &flags);
    let h = &resolved.unwrap().hosts()[0].clone();
    assert_eq!((h.ssh.user.as_str(), h.ssh.port), ("fleet", 2300));
    assert_eq!(h.ssh.connect_timeout, Duration::from_secs(1));
    let from = &h.ssh.openssh.origins;
    assert_eq!(
        (
            from["user"].as_str(),
            from["port"].as_str(),
            from["connect_timeout"].as_str()
        ),
        ("[ssh]", "[groups.g]", "a flag or `FLEETUP_*` variable")
    );
}

#[test]
fn a_proxy_jump_chain_resolves_each_hop_with_its_own_block() {
    let (home, inv) = resolve(CONFIG, &host("a", "inner-1", ""), &Overrides::default());
    let h = &inv.unwrap().hosts()[0].clone();
    let home = home.path();
    assert_eq!(
        h.ssh.jump_host.as_deref(),
        Some("bastion-1,ops@bastion-2:2022")
    );
    let [first, second] = h.ssh.jump_chain.as_slice() else {
        panic!("two hops: {:?}", h.ssh.jump_chain)
    };
    assert_eq!(
        (first.address.as_str(), first.port, first.user.as_str()),
        ("10.0.0.1", 2200, "jumper")
    );
    assert_eq!(first.identity_files, [home.join(".ssh/jump1")]);
    assert_eq!(first.known_hosts, home.join(".ssh/kh_bastion1"));
    assert!(!first.strict_host_key_checking);
    assert_eq!(
        (second.address.as_str(), second.port, second.user.as_str()),
        ("10.0.0.2", 2022, "ops"),
        "what the hop spells out beats its block"
    );
    assert_eq!(
        second.identity_files, h.ssh.identity_files,
        "no IdentityFile: the target's"
    );
    assert_eq!(
        second.known_hosts,
        home.join(".ssh/kh_10.0.0.2"),
        "`Host *` applies to hops too"
    );
    assert!(second.strict_host_key_checking);
    assert_eq!(h.ssh.user, "fallback");

    // Negation: `inner-direct` is excluded from the ProxyJump block.
    let (_home, inv) = resolve(
        CONFIG,
        &host("a", "inner-direct", ""),
        &Overrides::default(),
    );
    let h = &inv.unwrap().hosts()[0].clone();
    assert_eq!(h.ssh.jump_host, None);
    assert!(h.ssh.jump_chain.is_empty());
}

#[test]
fn an_inventory_jump_chain_is_resolved_hop_by_hop_too() {
    let inv = host(
        "a",
        "10.1.0.5",
        "[host.ssh]\njump_host = \"bastion-1, root@10.9.9.9\"\n",
    );
    let (_home, resolved) = resolve(CONFIG, &inv, &Overrides::default());
    let h = &resolved.unwrap().hosts()[0].clone();
    let hops: Vec<_> = h
        .ssh
        .jump_chain
        .iter()
        .map(|j| (j.spec.as_str(), j.address.as_str(), j.port, j.user.as_str()))
        .collect();
    assert_eq!(
        hops,
        [
            ("bastion-1", "10.0.0.1", 2200, "jumper"),
            ("root@10.9.9.9", "10.9.9.9", 22, "root")
        ]
    );
    assert_eq!(h.ssh.openssh.origins["jump_host"], "[[host]] `a`");
}

#[test]
fn strict_host_key_checking_no_in_ssh_config_changes_nothing() {
    let (_home, inv) = resolve(
        "Host *\n  StrictHostKeyChecking no\n",
        &host("a", "10.0.0.1", ""),
        &Overrides::default(),
    );
    let h = &inv.unwrap().hosts()[0].clone();
    assert!(!h.ssh.openssh.strict_host_key_checking);
    let (_home, inv) = resolve(
        "Host *\n  StrictHostKeyChecking yes\n",
        &host("a", "10.0.0.1", ""),
        &Overrides::default(),
    );
    assert!(inv.unwrap().hosts()[0].ssh.openssh.strict_host_key_checking);
}

#[test]
fn ssh_config_none_and_the_flag_choose_the_file() {
    let inv = format!("[ssh]\nssh_config = \"none\"\n{}", host("a", "lab3", ""));
    let (_home, resolved) = resolve(CONFIG, &inv, &Overrides::default());
    let h = &resolved.unwrap().hosts()[0].clone();
    assert_eq!(h.address, "lab3", "no ssh_config read");
    assert_eq!(h.ssh.openssh.ssh_config, None);

    let other = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other.path(), "Host lab3\n  HostName 10.3.3.3\n").unwrap();
    let flag = Overrides {
        ssh_config: Some(SshConfigChoice::File(other.path().to_path_buf())),
        ..Overrides::default()
    };
    let (_home, resolved) = resolve(CONFIG, &inv, &flag);
    let h = &resolved.unwrap().hosts()[0].clone();
    assert_eq!(
        h.address, "10.3.3.3",
        "the flag beats the inventory's `none`"
    );

    let off = Overrides {
        ssh_config: Some(SshConfigChoice::Off),
        ..Overrides::default()
    };
    let (_home, resolved) = resolve(CONFIG, &host("a", "lab3", ""), &off);
    assert_eq!(resolved.unwrap().hosts()[0].address, "lab3");
}

#[test]
fn a_missing_or_broken_ssh_config_is_an_error_naming_the_file() {
    let inv = format!(
        "[ssh]\nssh_config = \"/nonexistent/cfg\"\n{}",
        host("a", "lab3", "")
    );
    let (_home, resolved) = resolve(CONFIG, &inv, &Overrides::default());
    let text = format!("{:?}", resolved.unwrap_err());
    assert!(text.contains("/nonexistent/cfg"), "{text}");
    assert!(text.contains("--ssh-config none"), "{text}");

    let (_home, resolved) = resolve(
        "Host a\n  Port x\n",
        &host("a", "a", ""),
        &Overrides::default(),
    );
    let text = format!("{:?}", resolved.unwrap_err());
    assert!(text.contains(".ssh/config"), "{text}");

    let inv = host("a", "lab3", "[host.ssh]\nssh_config = \"/x\"\n");
    let (_home, resolved) = resolve(CONFIG, &inv, &Overrides::default());
    let text = format!("{:?}", resolved.unwrap_err());
    assert!(text.contains("applies to the whole inventory"), "{text}");
}
