//! Other sessions on a shared Postgres database: nodes outside `--limit`, or outside the
//! inventory, may still be connected while the migration rewrites the schema. The query, its
//! parsing and its wording, shared by the preflight and the runner's re-check after the stops.

use std::collections::BTreeMap;

use super::remote::Seen;
use super::{Finding, PreflightInput, Scope, check};
use crate::facts::ServiceState;
use crate::shell::quote;

/// The client sessions on the database other than the query's own and fleetup's read-only ones
/// ([`crate::node::PG_PROBE_APPLICATION`]: another fleetup auditing the same database at the same
/// moment is not a ledger node using it; two runs are kept apart by the migration's advisory
/// lock, whose session is not one of these).
const OTHERS: &str = "from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend' and coalesce(application_name, '') <> 'fleetup probe'";

/// One row per other session, tagged `session`: `session|client port (-1 for a Unix
/// socket)|address user application`.
pub(crate) fn query() -> String {
    format!(
        "select 'session', coalesce(client_port, -1), coalesce(host(client_addr), 'local') || ' ' || coalesce(usename::text, '') || ' ' || coalesce(application_name, '') {OTHERS}"
    )
}

/// `sessions|N`: the count, so that no row is told apart from a query that failed.
pub(crate) fn count_query() -> String {
    format!("select 'sessions', count(*) {OTHERS}")
}

/// What to do about sessions that are not this run's to stop.
pub(crate) const HINT: &str = "stop every ledger node using this database (including hosts outside `--limit` and outside the inventory), then run again: the migration must have the database to itself";

/// A client session on the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DbSession {
    /// The client's TCP port, as the client sees its own socket; `None` over a Unix socket.
    pub port: Option<u16>,
    /// `address user application`.
    pub client: String,
}

/// A `session|...` line of [`query`]'s output (`psql -At -F '|'`).
pub(crate) fn parse_line(line: &str) -> Option<DbSession> {
    let mut f = line.splitn(3, '|');
    if f.next()? != "session" {
        return None;
    }
    let port = f.next()?.trim().parse::<i64>().ok()?;
    Some(DbSession {
        port: u16::try_from(port).ok().filter(|p| *p > 0),
        client: f.next()?.trim().to_owned(),
    })
}

/// `N other session(s) on the database (clients)`.
pub(crate) fn describe(sessions: &[&DbSession]) -> String {
    let mut clients: Vec<&str> = sessions.iter().map(|s| s.client.as_str()).collect();
    clients.sort_unstable();
    clients.dedup();
    format!(
        "{} other session{} on the database ({})",
        sessions.len(),
        if sessions.len() == 1 { "" } else { "s" },
        clients
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The runner's command: [`count_query`] and [`query`] with the service's environment file, through
/// libpq's variables (the connection string is on no command line).
pub(crate) fn command(env_file: Option<&str>) -> String {
    let env = crate::node::env_prefix_with(env_file);
    format!(
        "{env}command -v psql >/dev/null 2>&1 || {{ echo 'psql is not installed on the node (postgresql-client)' >&2; exit 7; }}; \
         {} && {}PGCONNECT_TIMEOUT=10 exec psql -X -q -At -F '|' -v ON_ERROR_STOP=1 -c {} -c {}",
        crate::node::pg_env_from_conn_string(),
        crate::node::pg_probe_application(),
        quote(&count_query()),
        quote(&query())
    )
}

/// What the runner's command printed: the sessions, or why they are unknown.
pub(crate) fn parse_output(stdout: &str) -> Result<Vec<DbSession>, String> {
    let mut count = None;
    let mut sessions = Vec::new();
    for line in stdout.lines() {
        if let Some(n) = line.strip_prefix("sessions|") {
            count = n.trim().parse::<usize>().ok();
        } else if let Some(s) = parse_line(line) {
            sessions.push(s);
        }
    }
    match count {
        Some(_) => Ok(sessions),
        None => Err("the session count is missing from `psql`'s output".into()),
    }
}

/// The `db-sessions` finding of each Postgres migrator (one per database the plan migrates).
pub(super) fn findings(
    input: &PreflightInput,
    scope: &Scope,
    seen: &BTreeMap<&str, &Seen>,
) -> Vec<Finding> {
    scope
        .migrators
        .iter()
        .filter_map(|m| finding(input, scope, seen, m))
        .collect()
}

/// The `db-sessions` finding of the Postgres migrator `migrator`. Sessions whose client port is
/// a socket of a `numary` that `--stop` stops first (a running selected node) are this run's own
/// and pass: the runner counts again once the nodes are stopped. Any other session (a node
/// outside `--limit`, outside the inventory, an operator's client) fails.
fn finding(
    input: &PreflightInput,
    scope: &Scope,
    seen: &BTreeMap<&str, &Seen>,
    migrator: &str,
) -> Option<Finding> {
    // Only a migration needs the database to itself: a storage already migrated (a re-run
    // after a crash) gets no migrate step, and its nodes start next to others that serve.
    if !input
        .plan
        .steps
        .iter()
        .any(|s| s.kind == crate::plan::StepKind::Migrate && s.hosts.iter().any(|h| h == migrator))
    {
        return None;
    }
    if input.plan.strategy.is_zero_downtime() {
        return Some(Finding::pass(
            Some(migrator),
            check::DB_SESSIONS,
            format!(
                "strategy `{}`: the other nodes keep serving from the database while it migrates, as the table's zero-downtime row allows",
                input.plan.strategy
            ),
        ));
    }
    let found = seen.get(migrator)?.sessions.as_ref()?;
    let sessions = match found {
        Ok(s) => s,
        Err(why) => {
            return Some(Finding::fail(
                Some(migrator),
                check::DB_SESSIONS,
                format!("cannot count the other sessions on the database: {why}"),
                Some("install the PostgreSQL client (`psql`, package `postgresql-client`) on the migrator and make sure its role may read `pg_stat_activity`: fleetup counts the sessions again before migrating".to_owned()),
            ));
        }
    };
    // Sockets of nodes this run stops before the migration.
    let stopping: Vec<(&str, &[u16])> = scope
        .stopped
        .iter()
        .filter(|_| input.plan.stop_running)
        .filter(|h| {
            input
                .facts
                .get(h.as_str())
                .is_some_and(|f| f.service != ServiceState::Stopped)
        })
        .filter_map(|h| {
            seen.get(h.as_str())
                .map(|s| (h.as_str(), s.ports.as_slice()))
        })
        .collect();
    let ours = |s: &DbSession| {
        s.port
            .is_some_and(|p| stopping.iter().any(|(_, ports)| ports.contains(&p)))
    };
    let others: Vec<&DbSession> = sessions.iter().filter(|s| !ours(s)).collect();
    if !others.is_empty() {
        return Some(Finding::fail(
            Some(migrator),
            check::DB_SESSIONS,
            format!(
                "{}: something outside this run still uses the database the migration rewrites",
                describe(&others)
            ),
            Some(HINT.to_owned()),
        ));
    }
    Some(Finding::pass(
        Some(migrator),
        check::DB_SESSIONS,
        if sessions.is_empty() {
            "no other session on the database".to_owned()
        } else {
            format!(
                "{} session(s) on the database, all held by nodes `--stop` stops first ({}): counted again before the migration",
                sessions.len(),
                stopping
                    .iter()
                    .map(|(h, _)| format!("`{h}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
    ))
}

/// A TCP port from a `/proc/net/tcp` address (`0100007F:8704`, hex).
fn parse_port(address: &str) -> Option<u16> {
    let (_, port) = address.trim().rsplit_once(':')?;
    u16::from_str_radix(port, 16).ok()
}

/// A TCP socket of a `numary` process found on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Socket {
    pid: String,
    /// Why the process scan picked it (`binary`: it runs the node's binary).
    why: String,
    local_port: u16,
    listening: bool,
}

/// A `pid<TAB>why<TAB>local address<TAB>state` line of the preflight script.
pub(crate) fn parse_socket(line: &str) -> Option<Socket> {
    let mut f = line.split('\t');
    let (pid, why, addr, state) = (f.next()?, f.next()?, f.next()?, f.next()?);
    Some(Socket {
        pid: pid.to_owned(),
        why: why.to_owned(),
        local_port: parse_port(addr)?,
        // `0A`: TCP_LISTEN.
        listening: state.trim() == "0A",
    })
}

/// The local ports of the node's own server's sockets: a process that runs the node's binary,
/// or one listening on the node's API port (`api`, `host:port`). Another node's server that
/// merely shares the database (co-located, or the lab's nodes on one machine) is left out.
pub(crate) fn server_ports(sockets: &[Socket], api: &str) -> Vec<u16> {
    let api_port = api
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok());
    let own = |pid: &str| {
        sockets.iter().any(|s| {
            s.pid == pid && (s.why == "binary" || (s.listening && Some(s.local_port) == api_port))
        })
    };
    sockets
        .iter()
        .filter(|s| !s.listening && own(&s.pid))
        .map(|s| s.local_port)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleetup_probes_name_themselves_as_the_session_query_leaves_out() {
        let app = crate::node::PG_PROBE_APPLICATION;
        assert!(OTHERS.contains(&format!("<> '{app}'")));
        for cmd in [
            command(None),
            crate::schema::state_command(
                &crate::runner::tests::host("n"),
                crate::facts::StorageDriver::Postgres,
            ),
        ] {
            assert!(cmd.contains(&format!("PGAPPNAME='{app}' ")), "{cmd}");
        }
    }

    #[test]
    fn session_lines_parse_with_pipes_in_the_application_name() {
        let s = parse_line("session|34572|127.0.0.1 fleetup a|b").unwrap();
        assert_eq!(s.port, Some(34572));
        assert_eq!(s.client, "127.0.0.1 fleetup a|b");
        let local = parse_line("session|-1|local ledger ").unwrap();
        assert_eq!(local.port, None);
        assert_eq!(parse_line("ledger|default"), None);
        let d = describe(&[&s, &local, &s]);
        assert_eq!(
            d,
            "3 other sessions on the database (`127.0.0.1 fleetup a|b`, `local ledger`)"
        );
    }

    #[test]
    fn proc_net_tcp_ports_are_hex() {
        assert_eq!(parse_port("0100007F:8704"), Some(34564));
        assert_eq!(
            parse_port("00000000000000000000000001000000:0BF4"),
            Some(3060)
        );
        assert_eq!(parse_port("garbage"), None);
    }

    #[test]
    fn only_the_nodes_own_server_holds_its_sessions() {
        let lines = [
            // pid 10 listens on the node's API port (3068 = 0x0BFC): the node's server.
            "10\tsame-database\t0100007F:0BFC\t0A",
            "10\tsame-database\t0100007F:8704\t01",
            // pid 20 shares the database but serves another port: another node's.
            "20\tsame-database\t0100007F:0BFD\t0A",
            "20\tsame-database\t0100007F:9C40\t01",
            // pid 30 runs the node's binary.
            "30\tbinary\t0100007F:9C41\t01",
            "not a socket line",
        ];
        let sockets: Vec<Socket> = lines.iter().filter_map(|l| parse_socket(l)).collect();
        assert_eq!(sockets.len(), 5);
        assert_eq!(server_ports(&sockets, "127.0.0.1:3068"), [34564, 40001]);
    }

    #[test]
    fn the_runner_command_names_no_connection_string() {
        let cmd = command(Some("/etc/numary/env"));
        assert!(cmd.starts_with(&crate::envfile::loader("/etc/numary/env")));
        assert!(!cmd.contains("psql \"$NUMARY_STORAGE_POSTGRES_CONN_STRING\""));
        assert!(cmd.contains("pg_backend_pid()") && cmd.contains("count(*)"));
    }
}
