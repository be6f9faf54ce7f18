//! Gathering [`HostFacts`] over one connection per host: the probe script (home, environment
//! file, staged releases), `numary version` with the service's environment, the service
//! manager's status, `/_info` and `/_health` through the node, and the SQLite dir listing.
//! Read-only: nothing here writes on a host (no `numary storage` command runs).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::facts::{ApiInfo, HostFacts, ServiceState, StorageDriver, StorageFacts};
use crate::inventory::ResolvedHost;
use crate::node;
use crate::numary;
use crate::redact::redact;
use crate::ssh::{ConnectError, ExecOptions, ExitStatus, Session, Transport};
use crate::version::Version;

/// How long one HTTP probe of the API may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read-only fact command may take.
const FACT_TIMEOUT: Duration = Duration::from_secs(60);

/// Split `host:port` (or `[v6]:port`) of the API address.
pub fn split_api_address(api: &str) -> Option<(String, u16)> {
    let (host, port) = api.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// Everything fleetup can learn about one reachable host without changing it.
pub async fn gather<T: Transport>(t: &T, host: &ResolvedHost) -> HostFacts {
    gather_with(t, host, false).await
}

/// [`gather`]; with `schema`, a Postgres node also reads its database's schema, at the same time
/// as the other facts (on a channel of its own: the slowest read of a large fleet's audit).
pub async fn gather_with<T: Transport>(t: &T, host: &ResolvedHost, schema: bool) -> HostFacts {
    let opts = ExecOptions {
        timeout: Some(FACT_TIMEOUT),
        // Read-only: see `ExecOptions::local_deadline_only`.
        local_deadline_only: true,
        ..Default::default()
    };
    // The service manager's status and the API need nothing of the env file: they start at
    // once, while the env file is read; its values reach on stdin every later command that
    // needs them (the probe, `numary version`, the schema read).
    let status_cmd = node::service_state(host);
    let with_env = async {
        let mut env_divergent = Vec::new();
        let env_error = match &host.ledger.env_file {
            None => {
                t.set_service_env(None);
                None
            }
            Some(file) => match read_service_env(t, host, file).await {
                Ok(env) => {
                    env_divergent = env.divergent.iter().map(ToString::to_string).collect();
                    if let Some(conn) = env.get("NUMARY_STORAGE_POSTGRES_CONN_STRING") {
                        crate::redact::known().register_conn_string(conn);
                    }
                    t.set_service_env(Some(env.stdin()));
                    None
                }
                Err(why) => {
                    t.set_service_env(None);
                    Some(why)
                }
            },
        };
        let probe_cmd = node::probe_with(host, env_error.as_deref());
        let version_cmd = node::numary(host, &host.ledger.binary, &["version"]);
        let schema_cmd = schema.then(|| crate::schema::postgres_probe(host));
        let schema_read = async {
            let out = t.exec(schema_cmd.as_deref()?, &opts).await.ok()?;
            let text = out.stdout_lossy().to_string();
            (out.status.success() && !text.trim().is_empty()).then_some(text)
        };
        let (probe, version, schema_text) = tokio::join!(
            t.exec(&probe_cmd, &opts),
            t.exec(&version_cmd, &opts),
            schema_read,
        );
        (env_divergent, probe, version, schema_text)
    };
    let ((env_divergent, probe, version, schema_text), status, api) =
        tokio::join!(with_env, t.exec(&status_cmd, &opts), probe_api(t, host));
    let mut facts = HostFacts {
        env_divergent,
        ..Default::default()
    };

    match version {
        Ok(out) if out.status.success() => match numary::parse_version(&out.stdout_lossy()) {
            Ok(v) => facts.installed_version = Some(v),
            Err(e) => facts.problems.push(e.to_string()),
        },
        // A new node of a replacement is provisioned before fleetup deploys `numary` to it: a
        // binary that is not there yet (the shell's 127) is what is expected, not a problem.
        Ok(out) if host.replaces.is_some() && out.status == ExitStatus::Code(127) => {}
        Ok(out) => facts.problems.push(format!(
            "`{} version` exited with {}: {}",
            host.ledger.binary,
            out.status,
            tail(&redact(&out.stderr_lossy()))
        )),
        Err(e) => facts
            .problems
            .push(format!("`numary version` did not run: {e}")),
    }

    facts.service = match status {
        Ok(out) => {
            let code = match out.status {
                ExitStatus::Code(c) => Some(c),
                ExitStatus::Signal(_) => None,
            };
            let (state, problem) =
                node::parse_service_state(&host.ledger.service, code, &out.stdout_lossy());
            facts.problems.extend(problem);
            state
        }
        Err(e) => {
            facts
                .problems
                .push(format!("service status did not run: {e}"));
            ServiceState::Unknown
        }
    };

    match api {
        Ok((info, healthy)) => {
            facts.api = Some(ApiInfo {
                healthy,
                version: Version::parse(&info.version).ok(),
            });
            facts.ledgers = info.ledgers;
            facts.ledgers_source = "api".into();
        }
        Err(e) if facts.service == ServiceState::Running => facts
            .problems
            .push(format!("the service runs but its API does not answer: {e}")),
        Err(_) => {}
    }

    let probe = match probe {
        Ok(out) => node::parse_probe(&out.stdout_lossy()),
        Err(e) => {
            facts.problems.push(format!("probe did not run: {e}"));
            return facts;
        }
    };
    if let Some(err) = &probe.env_error {
        facts.problems.push(err.clone());
    }
    facts.staged = probe
        .releases
        .iter()
        .filter_map(|r| Version::parse(r).ok())
        .collect();
    facts.binary_target = probe.binary_target.clone();
    facts.busy_storage = probe.busy.clone();
    facts.locked = probe.locked;
    facts.lock_generation = probe.lock_generation.clone();
    let schema_of = |driver| {
        let cmd = crate::schema::state_command(host, driver);
        let opts = opts.clone();
        async move {
            match t.exec(&cmd, &opts).await {
                Ok(out) if out.status.success() => {
                    Some(crate::schema::parse_state(&out.stdout_lossy()))
                }
                _ => None,
            }
        }
    };
    match probe.driver.as_str() {
        // Postgres: one database for many nodes; its schema is read once, on the node that
        // would migrate it (`gather_schema`, once the plan knows which).
        "postgres" => {
            if let Some(text) = &schema_text {
                facts.schema = Some(crate::schema::parse_state(text));
            }
            facts.storage = Some(StorageFacts {
                driver: StorageDriver::Postgres,
                sqlite_dir: None,
                // Built on the node from libpq's variables: `user@host:port/db`, no password.
                postgres: probe.postgres.as_ref().map(|p| format!("postgresql://{p}")),
            });
        }
        "sqlite" => {
            facts.storage = Some(StorageFacts {
                driver: StorageDriver::Sqlite,
                sqlite_dir: Some(probe.dir.clone()),
                postgres: None,
            });
            let list_cmd = node::list_sqlite_dir(&probe.dir);
            let (listing, schema) =
                tokio::join!(t.exec(&list_cmd, &opts), schema_of(StorageDriver::Sqlite));
            facts.schema = schema;
            match listing {
                Ok(out) if out.status.success() => {
                    let (ledgers, journals) =
                        node::parse_sqlite_listing(&out.stdout_lossy(), &probe.db_name);
                    facts.hot_journals = journals;
                    if facts.ledgers_source.is_empty() {
                        facts.ledgers = ledgers;
                        facts.ledgers_source = "sqlite-files".into();
                    }
                }
                // A new node of a replacement is provisioned before fleetup deploys `numary` to it: a
                // binary that is not there yet (the shell's 127) is what is expected, not a problem.
                Ok(out) if host.replaces.is_some() && out.status == ExitStatus::Code(127) => {}
                Ok(out) => facts.problems.push(format!(
                    "cannot list the SQLite dir `{}`: {}",
                    probe.dir,
                    tail(&out.stderr_lossy())
                )),
                Err(e) => facts
                    .problems
                    .push(format!("cannot list the SQLite dir: {e}")),
            }
        }
        // The env file could not be read: nothing is known of the storage.
        "" => {}
        other => facts.problems.push(format!(
            "the environment sets NUMARY_STORAGE_DRIVER=`{other}`, which numary does not know"
        )),
    }
    facts
}

/// The migration rows of `host`'s storage (read-only), for [`HostFacts::schema`].
pub async fn gather_schema<T: Transport>(
    t: &T,
    host: &ResolvedHost,
    driver: StorageDriver,
) -> Option<crate::schema::SchemaState> {
    let opts = ExecOptions {
        timeout: Some(FACT_TIMEOUT),
        // Read-only: see `ExecOptions::local_deadline_only`.
        local_deadline_only: true,
        ..Default::default()
    };
    let cmd = crate::schema::state_command(host, driver);
    match t.exec(&cmd, &opts).await {
        Ok(out) if out.status.success() => Some(crate::schema::parse_state(&out.stdout_lossy())),
        _ => None,
    }
}

/// The service's env file, read (never sourced) and parsed as systemd reads it.
async fn read_service_env<T: Transport>(
    t: &T,
    host: &ResolvedHost,
    file: &str,
) -> Result<crate::envfile::EnvFile, String> {
    let opts = ExecOptions {
        timeout: Some(FACT_TIMEOUT),
        // Read-only: see `ExecOptions::local_deadline_only`.
        local_deadline_only: true,
        ..Default::default()
    };
    let through = if host.ledger.escalate.is_none() {
        ""
    } else {
        ", not even through sudo -n"
    };
    let out = t
        .exec(&node::read_env_file(host, file), &opts)
        .await
        .map_err(|e| format!("cannot read {file}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot read {file}{through} ({})",
            tail(&crate::shell::printable(&redact(&out.stderr_lossy()), 200))
        ));
    }
    if out.stdout.len() > crate::envfile::MAX_LEN || out.truncated > 0 {
        return Err(format!(
            "{file} is larger than {} KiB: not an env file",
            crate::envfile::MAX_LEN / 1024
        ));
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| format!("{file} is not UTF-8 text (systemd requires UTF-8)"))?;
    Ok(crate::envfile::parse(&text))
}

/// `/_info` and `/_health` as the node sees them.
async fn probe_api<T: Transport>(
    t: &T,
    host: &ResolvedHost,
) -> Result<(numary::ServerInfo, bool), String> {
    let (addr, port) = split_api_address(&host.ledger.api)
        .ok_or_else(|| format!("`{}` is not host:port", host.ledger.api))?;
    let info = t
        .http_get(&addr, port, "/_info", HTTP_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if info.status != 200 {
        return Err(format!("`/_info` answered HTTP {}", info.status));
    }
    let parsed = numary::parse_info(&info.body).map_err(|e| e.to_string())?;
    let healthy = matches!(
        t.http_get(&addr, port, "/_health", HTTP_TIMEOUT).await,
        Ok(r) if r.status == 200
    );
    Ok((parsed, healthy))
}

/// Facts for every host: gathered in parallel over the established sessions; hosts whose
/// connection failed get `unreachable` with the reason.
pub async fn gather_all(
    hosts: &[ResolvedHost],
    conns: &[(String, Result<Session, ConnectError>)],
) -> BTreeMap<String, HostFacts> {
    let mut set = crate::tasks::HostTasks::new();
    let mut facts = BTreeMap::new();
    // One node reads a shared Postgres database's schema in its probe: the one marked
    // `migrator = true`, else the first (others are read later, only if the plan needs them).
    let schema_host = hosts
        .iter()
        .find(|h| h.migrator)
        .or(hosts.first())
        .map(|h| h.name.clone());
    for (name, conn) in conns {
        let Some(host) = hosts.iter().find(|h| &h.name == name) else {
            continue;
        };
        match conn {
            Ok(session) => {
                let (session, host) = (session.clone(), host.clone());
                let schema = schema_host.as_deref() == Some(host.name.as_str());
                set.spawn(&host.name.clone(), async move {
                    gather_with(&session, &host, schema).await
                });
            }
            Err(e) => {
                facts.insert(
                    name.clone(),
                    HostFacts {
                        unreachable: Some(e.to_string()),
                        ..Default::default()
                    },
                );
            }
        }
    }
    while let Some((name, joined)) = set.next().await {
        // A probe that panicked leaves the host unknown: say so, never show it blank.
        let f = joined.unwrap_or_else(|why| HostFacts {
            unreachable: Some(why),
            ..Default::default()
        });
        facts.insert(name, f);
    }
    facts
}

/// The last non-empty line of some output, for one-line problem reports.
fn tail(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_address_forms() {
        assert_eq!(
            split_api_address("127.0.0.1:3068"),
            Some(("127.0.0.1".into(), 3068))
        );
        assert_eq!(split_api_address("[::1]:4000"), Some(("::1".into(), 4000)));
        assert_eq!(split_api_address("localhost"), None);
        assert_eq!(split_api_address("h:notaport"), None);
    }
}
