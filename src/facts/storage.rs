//! Which storage a node's ledgers live in, as seen from the network: nodes share a storage only
//! when they reach the same database server, or when the inventory names one storage for them.
//! A pure function of the inventory host and its facts, so the plan can group nodes by it.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::{HostFacts, StorageDriver};
use crate::inventory::ResolvedHost;

/// The identity of one storage. Two nodes with equal ids are backed up and migrated as one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StorageId {
    /// `storage = "NAME"` in the inventory.
    Named { name: String },
    /// A Postgres database reached over the network: the canonical host (lowercase, IPs
    /// normalized), the port and the database. The user does not matter: one database.
    Postgres {
        host: String,
        port: String,
        database: String,
    },
    /// The node's own: its SQLite files, or a Postgres it reaches at a node-relative address
    /// (`localhost`, 127.0.0.0/8, `::1`, a Unix socket dir, no host).
    Own { node: String },
}

impl StorageId {
    /// The node's storage: the inventory's `storage` name, else what its facts tell; `None` when
    /// neither tells (unreachable, no storage settings, a Postgres connection not understood).
    pub fn of(host: &ResolvedHost, facts: Option<&HostFacts>) -> Option<StorageId> {
        if let Some(name) = &host.ledger.storage {
            return Some(StorageId::Named { name: name.clone() });
        }
        let storage = facts.filter(|f| f.reachable())?.storage.as_ref()?;
        let own = || StorageId::Own {
            node: host.name.clone(),
        };
        match storage.driver {
            StorageDriver::Sqlite => Some(own()),
            StorageDriver::Postgres => {
                let endpoint = PgEndpoint::parse(storage.postgres.as_deref()?)?;
                Some(if endpoint.is_node_relative() {
                    own()
                } else {
                    StorageId::Postgres {
                        host: endpoint.host,
                        port: endpoint.port,
                        database: endpoint.database,
                    }
                })
            }
        }
    }

    /// The Postgres server and database the node reaches over the network, whatever the
    /// inventory names (`None` for SQLite and node-relative addresses): two nodes with equal
    /// endpoints but different storage names contradict each other.
    pub fn network_endpoint(facts: Option<&HostFacts>) -> Option<StorageId> {
        let storage = facts.filter(|f| f.reachable())?.storage.as_ref()?;
        if storage.driver != StorageDriver::Postgres {
            return None;
        }
        let endpoint = PgEndpoint::parse(storage.postgres.as_deref()?)?;
        (!endpoint.is_node_relative()).then_some(StorageId::Postgres {
            host: endpoint.host,
            port: endpoint.port,
            database: endpoint.database,
        })
    }

    /// The node whose own storage this is.
    pub fn own_node(&self) -> Option<&str> {
        match self {
            StorageId::Own { node } => Some(node),
            _ => None,
        }
    }
}

impl fmt::Display for StorageId {
    /// `storage `main-db``, `postgres `db.internal:5432/ledger``, `the own storage of `node-1``.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageId::Named { name } => write!(f, "storage `{name}`"),
            StorageId::Postgres {
                host,
                port,
                database,
            } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                write!(f, "postgres `{host}:{port}/{database}`")
            }
            StorageId::Own { node } => write!(f, "the own storage of `{node}`"),
        }
    }
}

/// `user@host:port/db` as the facts report a Postgres connection (no password; a redacted
/// `user:***@` is accepted too), split.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PgEndpoint {
    host: String,
    port: String,
    database: String,
}

impl PgEndpoint {
    /// The host may hold `:` (IPv6) and `/` (a socket dir) and is never empty in the facts (the
    /// probe prints `localhost` for none), so the port is found as the first `:DIGITS/` after the
    /// last `@` before it.
    fn parse(conn: &str) -> Option<PgEndpoint> {
        let rest = conn
            .strip_prefix("postgresql://")
            .or_else(|| conn.strip_prefix("postgres://"))
            .unwrap_or(conn);
        let bytes = rest.as_bytes();
        let port_at = (0..bytes.len()).find_map(|i| {
            if bytes[i] != b':' {
                return None;
            }
            let digits = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit() || **b == b',')
                .count();
            let end = i + 1 + digits;
            (digits > 0 && bytes.get(end) == Some(&b'/')).then_some((i, end))
        });
        let (authority, port, database) = match port_at {
            Some((colon, slash)) => (&rest[..colon], &rest[colon + 1..slash], &rest[slash + 1..]),
            // No port (written by hand): libpq's default, the host ends at the first `/`
            // after the user.
            None => {
                let at = rest.rfind('@').map_or(0, |i| i + 1);
                let slash = at + rest[at..].find('/')?;
                (&rest[..slash], "5432", &rest[slash + 1..])
            }
        };
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        Some(PgEndpoint {
            host: canonical_hosts(host),
            port: port.to_string(),
            database: database.to_string(),
        })
    }

    /// Reached through the node itself: any host of a (libpq multi-host) list that is
    /// node-relative makes the storage the node's own, as two nodes might reach two servers.
    fn is_node_relative(&self) -> bool {
        self.host.split(',').any(is_node_relative_host)
    }
}

/// `localhost` (and `*.localhost`), loopback and unspecified IPs, a Unix socket dir, or nothing.
pub fn is_node_relative_host(host: &str) -> bool {
    let host = host.trim().trim_end_matches('.');
    if host.is_empty() || host.starts_with('/') || host.starts_with('@') {
        return true;
    }
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return true;
    }
    match lower.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
        }
        Err(_) => false,
    }
}

/// Each host of a comma-separated list lowercased without a trailing dot, IPs normalized.
fn canonical_hosts(hosts: &str) -> String {
    hosts
        .split(',')
        .map(|h| {
            let h = h.trim().trim_matches(['[', ']']);
            match h.parse::<IpAddr>() {
                Ok(ip) => ip.to_string(),
                Err(_) if h.starts_with('/') => h.trim_end_matches('/').to_string(),
                Err(_) => h.trim_end_matches('.').to_ascii_lowercase(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::StorageFacts;

    fn host(name: &str, storage: Option<&str>) -> ResolvedHost {
        let mut h = crate::inventory::ResolvedHost {
            name: name.to_string(),
            address: format!("{name}.internal"),
            groups: Vec::new(),
            migrator: false,
            replaces: None,
            ssh: crate::inventory::SshSettings {
                user: "root".into(),
                port: 22,
                identity_files: Vec::new(),
                known_hosts: "/dev/null".into(),
                global_known_hosts: vec![],
                connect_timeout: std::time::Duration::from_secs(1),
                command_timeout: std::time::Duration::from_secs(1),
                migration_timeout: std::time::Duration::from_secs(1),
                jump_host: None,
                use_agent: false,
                jump_chain: Vec::new(),
                openssh: Default::default(),
            },
            ledger: Default::default(),
            rollout: Default::default(),
        };
        h.ledger.storage = storage.map(str::to_string);
        h
    }

    fn pg(conn: &str) -> HostFacts {
        HostFacts {
            storage: Some(StorageFacts {
                driver: StorageDriver::Postgres,
                sqlite_dir: None,
                postgres: Some(conn.to_string()),
            }),
            ..HostFacts::default()
        }
    }

    fn id(name: &str, conn: &str) -> Option<StorageId> {
        StorageId::of(&host(name, None), Some(&pg(conn)))
    }

    fn own(node: &str) -> Option<StorageId> {
        Some(StorageId::Own { node: node.into() })
    }

    #[test]
    fn a_node_relative_postgres_is_the_node_own_storage() {
        for conn in [
            "postgresql://ledger@localhost:5432/ledger",
            "postgresql://ledger@LocalHost.:5432/ledger",
            "postgresql://ledger@127.0.0.1:5432/ledger",
            "postgresql://ledger@127.1.2.3:5432/ledger",
            "postgresql://ledger@::1:5432/ledger",
            "postgresql://ledger@::ffff:127.0.0.1:5432/ledger",
            "postgresql://ledger@0.0.0.0:5432/ledger",
            "postgresql://ledger@/var/run/postgresql:5432/ledger",
            "postgresql://ledger:***@localhost:5432/ledger",
            "postgresql://@localhost:5432/",
            "postgresql://ledger@db.internal,localhost:5432/ledger",
        ] {
            assert_eq!(id("node-1", conn), own("node-1"), "{conn}");
        }
        // Same conn string on two nodes: two storages.
        let conn = "postgresql://ledger@localhost:5432/ledger";
        assert_ne!(id("node-1", conn), id("node-2", conn));
    }

    #[test]
    fn a_networked_postgres_is_one_storage_for_every_node_reaching_it() {
        let a = id("node-1", "postgresql://ledger@DB.Internal.:5432/ledger");
        let b = id("node-2", "postgresql://other:***@db.internal:5432/ledger");
        assert_eq!(a, b, "the user and the case do not matter");
        assert_eq!(
            a,
            Some(StorageId::Postgres {
                host: "db.internal".into(),
                port: "5432".into(),
                database: "ledger".into()
            })
        );
        assert_eq!(a.unwrap().to_string(), "postgres `db.internal:5432/ledger`");
        assert_ne!(
            id("node-1", "postgresql://u@db.internal:5433/ledger"),
            id("node-2", "postgresql://u@db.internal:5432/ledger")
        );
        assert_ne!(
            id("node-1", "postgresql://u@db.internal:5432/ledger"),
            id("node-2", "postgresql://u@db.internal:5432/other")
        );
        let v6 = id("node-1", "postgresql://u@fd00:0::12:5432/ledger").unwrap();
        assert_eq!(
            v6,
            id("node-2", "postgresql://u@fd00::12:5432/ledger").unwrap()
        );
        assert_eq!(v6.to_string(), "postgres `[fd00::12]:5432/ledger`");
    }

    #[test]
    fn the_inventory_name_wins_over_the_connection() {
        let named = Some(StorageId::Named {
            name: "main".into(),
        });
        let local = pg("postgresql://ledger@localhost:5432/ledger");
        assert_eq!(StorageId::of(&host("a", Some("main")), Some(&local)), named);
        let remote = pg("postgresql://ledger@db.internal:5432/ledger");
        assert_eq!(
            StorageId::of(&host("b", Some("main")), Some(&remote)),
            named
        );
        // Known without facts, e.g. for an unreachable node.
        assert_eq!(StorageId::of(&host("c", Some("main")), None), named);
        assert_eq!(
            StorageId::network_endpoint(Some(&remote)),
            id("x", "postgresql://ledger@db.internal:5432/ledger")
        );
        assert_eq!(StorageId::network_endpoint(Some(&local)), None);
    }

    #[test]
    fn sqlite_is_own_and_unknown_storage_is_none() {
        let sqlite = HostFacts {
            storage: Some(StorageFacts {
                driver: StorageDriver::Sqlite,
                sqlite_dir: Some("/data".into()),
                postgres: None,
            }),
            ..HostFacts::default()
        };
        assert_eq!(StorageId::of(&host("a", None), Some(&sqlite)), own("a"));
        assert_eq!(StorageId::of(&host("a", None), None), None);
        let unreachable = HostFacts {
            unreachable: Some("timeout".into()),
            ..pg("postgresql://u@db:5432/l")
        };
        assert_eq!(StorageId::of(&host("a", None), Some(&unreachable)), None);
        assert_eq!(
            StorageId::of(&host("a", None), Some(&HostFacts::default())),
            None
        );
        assert_eq!(id("a", "not a connection"), None);
        // Without a port: libpq's default.
        assert_eq!(
            id("a", "postgresql://u:***@db/l"),
            id("b", "postgresql://u@db:5432/l")
        );
    }
}
