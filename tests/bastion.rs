//! SSH like OpenSSH on the practice lab: a real `fleetup upgrade` through a two-hop bastion
//! chain (`lab up --bastion 2`, hops named in the lab's ssh_config), proved by the nodes' end
//! state and by the bastions' own sshd logs; and an inventory address that is only an
//! ssh_config `Host` alias.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use fleetup::exit_code;
use fleetup::lab::{Driver, Lab, LabGuard};
use lab_fixture::{assert_serving, both, code, fleetup, json, release, spec, stderr};

/// The inventory's `[[host]]` endpoint lines of `node`, as the lab writes them.
fn endpoint(lab: &Lab, node: &str) -> String {
    let port = lab.node(node).unwrap().ssh_port;
    format!("address = \"127.0.0.1\"\nport = {port}")
}

#[test]
fn an_offline_upgrade_goes_through_a_two_hop_bastion_chain() {
    let mut s = spec(Driver::Sqlite, 2, "1.6.1");
    s.bastions = 2;
    let lab = LabGuard::up(&s).expect("lab up");
    let (b1, b2) = (&lab.bastions[0], &lab.bastions[1]);
    let node_ports: Vec<u16> = lab.nodes.iter().map(|n| n.ssh_port).collect();

    // The inventory resolves each hop with its own ssh_config block.
    let list = fleetup(
        &lab.inventory_path(),
        &["inventory", "list", "--format", "json"],
    );
    assert_eq!(code(&list), exit_code::SUCCESS, "{}", both(&list));
    let hosts = json(&list);
    for h in hosts.as_array().unwrap() {
        let chain: Vec<(String, u64)> = h["ssh"]["jump_chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["spec"].as_str().unwrap().to_owned(),
                    j["port"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            chain,
            [
                ("bastion-1".to_owned(), u64::from(b1.ssh_port)),
                ("bastion-2".to_owned(), u64::from(b2.ssh_port))
            ]
        );
        assert!(
            h["ssh"]["openssh"]["origins"]["jump_host"] == "[ssh]",
            "{h}"
        );
    }

    let new = release(&lab, "1.8.3");
    let out = fleetup(
        &lab.inventory_path(),
        &[
            "upgrade",
            "--to",
            "1.8.3",
            "--binary",
            new.to_str().unwrap(),
            "--stop",
        ],
    );
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    // The real end state: every node's binary symlink, its running service and what it serves.
    assert_serving(&lab, "1.8.3", "after the upgrade through the bastions");
    assert_eq!(
        lab.misuse_records().unwrap(),
        Vec::<serde_json::Value>::new()
    );

    // The traffic went through the chain: bastion-1 only ever tunnelled to bastion-2, and
    // bastion-2 tunnelled to every node (once: one connection per node, shared hops).
    let first = b1.forwarded_ports();
    assert!(!first.is_empty(), "bastion-1 opened no tunnel");
    assert!(
        first.iter().all(|p| *p == b2.ssh_port),
        "bastion-1 tunnelled only to bastion-2 ({}): {first:?}",
        b2.ssh_port
    );
    let second = b2.forwarded_ports();
    for port in &node_ports {
        assert!(
            second.contains(port),
            "bastion-2 tunnelled to the node on port {port}: {second:?}"
        );
    }
    assert!(
        second.iter().all(|p| node_ports.contains(p)),
        "bastion-2 tunnelled only to nodes: {second:?}"
    );
    assert_eq!(
        first.len(),
        1,
        "one shared tunnel to bastion-2 for both nodes: {first:?}"
    );

    // Each hop's host key is checked against its own known_hosts: without bastion-2's entries
    // nothing connects, and the error names that hop.
    let kh = lab.known_hosts_path();
    let text = std::fs::read_to_string(&kh).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with(&format!("[127.0.0.1]:{} ", b2.ssh_port)))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(without, text, "the lab recorded bastion-2's keys");
    std::fs::write(&kh, without).unwrap();
    let refused = fleetup(&lab.inventory_path(), &["status"]);
    assert_ne!(code(&refused), exit_code::SUCCESS, "{}", both(&refused));
    assert!(
        stderr(&refused).contains(&format!("127.0.0.1]:{}", b2.ssh_port)),
        "the unknown key of bastion-2 is named:\n{}",
        both(&refused)
    );
    assert_eq!(
        b1.forwarded_ports().len(),
        2,
        "the new run went through bastion-1 again"
    );
}

#[test]
fn an_address_that_is_only_an_ssh_config_alias_connects() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 1, "1.8.2")).expect("lab up");
    let node = lab.node("node-1").unwrap();
    // The lab's inventory with the node's address replaced by an alias, and no port.
    let inventory = std::fs::read_to_string(lab.inventory_path()).unwrap();
    let aliased = inventory.replace(&endpoint(&lab, "node-1"), "address = \"lab3\"");
    assert_ne!(aliased, inventory);
    let inv = lab.dir.join("aliased.toml");
    std::fs::write(&inv, aliased).unwrap();
    let config = lab.dir.join("my_ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host lab3\n  HostName 127.0.0.1\n  Port {}\nHost *\n  User nobody-in-particular\n",
            node.ssh_port
        ),
    )
    .unwrap();
    let marker = node.root.join("reached-through-the-alias");
    let touch = format!("touch {}", marker.display());

    // The lab's inventory says `ssh_config = "none"`: `lab3` does not resolve, and the hint
    // says no ssh_config was read.
    let out = fleetup(&inv, &["status"]);
    assert_eq!(code(&out), exit_code::UNREACHABLE, "{}", both(&out));
    assert!(
        stderr(&out).contains("cannot resolve the name `lab3`")
            && stderr(&out).contains("no ssh_config was read"),
        "{}",
        both(&out)
    );
    let out = fleetup(&inv, &["exec", "--", &touch]);
    assert_ne!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert!(!marker.exists());

    // `--ssh-config` beats the inventory: `lab3` is 127.0.0.1 on the node's port. The
    // inventory's own `user` still beats the file's `Host *` User.
    let out = fleetup(
        &inv,
        &[
            "--ssh-config",
            config.to_str().unwrap(),
            "exec",
            "--",
            &touch,
        ],
    );
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert!(marker.is_file(), "the command ran on the node");

    // A file that does not know the alias: the hint names the file that was read.
    let other = lab.dir.join("other_ssh_config");
    std::fs::write(&other, "Host something-else\n  Port 1\n").unwrap();
    let out = fleetup(&inv, &["--ssh-config", other.to_str().unwrap(), "status"]);
    assert_eq!(code(&out), exit_code::UNREACHABLE, "{}", both(&out));
    assert!(
        stderr(&out).contains(&format!("ssh_config `{}` was read", other.display())),
        "{}",
        both(&out)
    );
}
