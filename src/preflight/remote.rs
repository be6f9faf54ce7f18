//! The preflight's checks on one node: one read-only script (free disk, SQLite file sizes,
//! `numary` processes using the storage, the fleet lock, and on the Postgres migrator a `psql`
//! query for extensions, database size and ledgers), plus a probe of the API port. The service's
//! environment file is sourced inside the remote shell: the connection string never appears on a
//! command line fleetup builds, in output or in events.

use std::collections::BTreeMap;
use std::time::Duration;

use super::sessions::DbSession;
use super::{Finding, PreflightInput, Scope, check};
use crate::facts::{HostFacts, ServiceState, StorageDriver};
use crate::inventory::ResolvedHost;
use crate::plan::{BinarySource, HostAction};
use crate::redact::redact;
use crate::shell::{quote, validate_ledger_name};
use crate::ssh::{ExecOptions, HttpError, Transport};
use crate::version::Version;

/// How long the preflight script may take on one node.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
const PORT_TIMEOUT: Duration = Duration::from_secs(3);
/// The backup needs the data's size plus this margin (copies, dump overhead).
const BACKUP_MARGIN: f64 = 1.2;
/// Assumed size of a binary each node downloads (its size is unknown before the download).
const URL_BINARY_ASSUMED: u64 = 256 << 20;
/// Output of a lock file shown at most.
const LOCK_BYTES: usize = 4096;

pub(super) const SECTION: &str = "==fleetup-preflight:";

/// What the script should look at on one node.
struct Want<'a> {
    host: &'a ResolvedHost,
    /// Free space of the backup dir's and releases dir's filesystems.
    disk: bool,
    /// SQLite dir whose `<db_name>_*.db` sizes are summed (backup estimate).
    sqlite_sizes: Option<&'a str>,
    /// Scan processes for a `numary` using this node's binary or storage.
    processes: bool,
    sqlite_dir: Option<&'a str>,
    postgres: bool,
    /// The switch's preconditions: `(binary's current version, if known)`.
    switch: Option<Option<&'a Version>>,
    /// Query Postgres (extensions, size, ledgers).
    psql: bool,
    pg_trgm: bool,
}

fn script(w: &Want) -> String {
    let mut s = String::new();
    // The service's environment from stdin (read and parsed by the facts, never sourced).
    s.push_str(&crate::node::env_prefix(w.host));
    s.push('\n');
    if w.disk {
        s.push_str(&format!(
            "echo {SECTION}df\n\
             pf_df() {{ p=$2; while [ ! -d \"$p\" ]; do p=$(dirname -- \"$p\"); done; printf '%s\\t%s\\t' \"$1\" \"$p\"; df -Pk -- \"$p\" 2>/dev/null | tail -n 1; }}\n\
             pf_df backup {}\n\
             pf_df releases {}\n",
            quote(&w.host.ledger.backup_dir),
            quote(&w.host.ledger.releases_dir),
        ));
    }
    if let Some(dir) = w.sqlite_sizes {
        s.push_str(&format!(
            "echo {SECTION}sqlite\n\
             if [ -d {d} ]; then (cd {d} && for f in \"${{NUMARY_STORAGE_SQLITE_DB_NAME:-numary}}\"_*.db; do [ -f \"$f\" ] && printf '%s\\t%s\\n' \"$(wc -c <\"$f\" | tr -d ' ')\" \"$f\"; done); fi\n",
            d = quote(dir)
        ));
    }
    if w.processes {
        s.push_str(&process_scan(w));
    }
    // A lock is a dir holding `owner.json` (see `crate::lock`); anything else there counts too.
    let lock = quote(&crate::lock::lock_path(w.host));
    s.push_str(&format!(
        "echo {SECTION}lock\n\
         if [ -e {lock} ]; then echo held; printf 'fleetup-lock %s %s\\n' \"$(date +%s)\" \"$(stat -c %Y {lock} 2>/dev/null || stat -f %m {lock} 2>/dev/null || echo -)\"; \
         if [ -d {lock} ]; then head -c {LOCK_BYTES} {lock}/owner.json 2>/dev/null; else head -c {LOCK_BYTES} {lock}; fi; echo; fi\n"
    ));
    if let Some(current) = w.switch {
        s.push_str(&switch_probe(w.host, current));
    }
    if w.psql {
        let mut exts = vec!["'pgcrypto'"];
        if w.pg_trgm {
            exts.push("'pg_trgm'");
        }
        let queries = [
            "select 'role', rolsuper, has_database_privilege(current_database(), 'CREATE') from pg_roles where rolname = current_user".to_owned(),
            format!(
                "select 'ext', n, exists(select 1 from pg_extension where extname = n), exists(select 1 from pg_available_extensions where name = n), coalesce((select bool_or(coalesce((to_jsonb(v)->>'trusted')::bool, false)) from pg_available_extension_versions v where v.name = n), false) from unnest(array[{}]) as e(n)",
                exts.join(",")
            ),
            "select 'size', pg_database_size(current_database())".to_owned(),
            super::sessions::count_query(),
            super::sessions::query(),
            // Last: the registry is missing before 1.?, and an error here must not hide the rest.
            "select 'ledger', ledger from \"_system\".ledgers order by 1, 2".to_owned(),
        ];
        let args: Vec<String> = queries.iter().map(|q| format!("-c {}", quote(q))).collect();
        s.push_str(&format!(
            "echo {SECTION}psql\n\
             if command -v psql >/dev/null 2>&1; then ( {} && {}PGCONNECT_TIMEOUT=10 exec psql -X -q -At -F '|' {} ) 2>&1; else echo 'psql: not found'; fi\n",
            crate::node::pg_env_from_conn_string(),
            crate::node::pg_probe_application(),
            args.join(" ")
        ));
    }
    s.push_str(&format!("echo {SECTION}end\n"));
    s
}

/// What the switch step needs, read only: `dir ok|ro` (the binary's dir takes the temp link
/// of the swap), `kind link|file|other|none`, for a plain file `kept same|differs|creatable|
/// blocked` (it is kept as `<releases>/<old V>/numary`, never over a different file), and
/// `releases ok|blocked`. `-w` is the kernel's answer for this user (always yes for root).
fn switch_probe(host: &ResolvedHost, current: Option<&Version>) -> String {
    let releases = host.ledger.releases_dir.trim_end_matches('/');
    let kept = current.map_or_else(String::new, |v| format!("{releases}/{v}"));
    format!(
        "echo {SECTION}switch\n\
         pf_up() {{ p=$1; while [ ! -e \"$p\" ]; do p=$(dirname -- \"$p\"); done; echo \"$p\"; }}\n\
         b={b}; o={o}; d=$(dirname -- \"$b\")\n\
         if [ -d \"$d\" ] && [ -w \"$d\" ]; then echo dir ok; else echo dir ro; fi\n\
         if [ -L \"$b\" ]; then echo kind link\n\
         elif [ -f \"$b\" ]; then echo kind file\n\
         \x20 if [ -z \"$o\" ]; then echo kept unknown\n\
         \x20 elif [ -e \"$o/numary\" ]; then if cmp -s \"$b\" \"$o/numary\"; then echo kept same; else echo kept differs; fi\n\
         \x20 else p=$(pf_up \"$o\"); if [ -d \"$p\" ] && [ -w \"$p\" ]; then echo kept creatable; else echo \"kept blocked $p\"; fi; fi\n\
         elif [ -e \"$b\" ]; then echo kind other; else echo kind none; fi\n\
         p=$(pf_up {r}); if [ -d \"$p\" ] && [ -w \"$p\" ]; then echo releases ok; else echo \"releases blocked $p\"; fi\n",
        b = quote(&host.ledger.binary),
        o = quote(&kept),
        r = quote(releases),
    )
}

/// The `binary-switch` finding from [`switch_probe`]'s lines.
fn switch_finding(
    name: &str,
    host: &ResolvedHost,
    current: Option<&Version>,
    lines: &[String],
) -> Finding {
    let bin = &host.ledger.binary;
    let dir = std::path::Path::new(bin)
        .parent()
        .map_or_else(|| ".".to_owned(), |p| p.display().to_string());
    let releases = host.ledger.releases_dir.trim_end_matches('/');
    let kept = current.map_or_else(String::new, |v| format!("{releases}/{v}/numary"));
    let has = |l: &str| lines.iter().any(|x| x == l);
    let after = |prefix: &str| {
        lines
            .iter()
            .find_map(|x| x.strip_prefix(prefix).map(str::to_owned))
    };
    let mut bad = Vec::new();
    if lines.is_empty() {
        bad.push("the switch's preconditions could not be read".to_owned());
    }
    if has("dir ro") {
        bad.push(format!(
            "`{dir}` is not writable: the swap creates `{bin}.fleetup-new` there"
        ));
    }
    if has("kind other") {
        bad.push(format!("`{bin}` is neither a symlink nor a plain file"));
    }
    if has("kept unknown") {
        bad.push(format!(
            "`{bin}` is a plain file of unknown version: it cannot be kept as its release"
        ));
    }
    if has("kept differs") {
        bad.push(format!(
            "`{bin}` is a plain file that differs from `{kept}`: the switch keeps the old binary there and never over a different file"
        ));
    }
    if let Some(p) = after("kept blocked ") {
        bad.push(format!(
            "`{kept}` cannot be created to keep the old binary (`{p}` is not a writable dir)"
        ));
    }
    if let Some(p) = after("releases blocked ") {
        bad.push(format!(
            "`{releases}` is not writable or creatable (`{p}` is not a writable dir)"
        ));
    }
    if bad.is_empty() {
        let kind = if has("kind file") {
            format!("a plain file, kept as `{kept}` first")
        } else if has("kind link") {
            "a symlink".to_owned()
        } else {
            "absent".to_owned()
        };
        return Finding::pass(
            Some(name),
            check::SWITCH,
            format!(
                "`{bin}` is {kind}; `{dir}` and `{releases}` are writable: the swap can be made"
            ),
        );
    }
    Finding::fail(
        Some(name),
        check::SWITCH,
        bad.join("; "),
        Some(format!(
            "make `{dir}` and `{releases}` writable for fleetup's SSH user; a plain-file binary must equal `{kept}` (or make `{bin}` a symlink to its release by hand)"
        )),
    )
}

/// `pid<TAB>why<TAB>cmdline` for each process that looks like `numary` (its name, at most 15
/// characters in `comm`, is or contains `numary`, or is the binary's own name) and runs this node's
/// binary, holds its SQLite files open, or has its storage in its environment. Compared with
/// shell built-ins only, so no secret reaches a process's arguments.
fn process_scan(w: &Want) -> String {
    let bin = quote(&w.host.ledger.binary);
    let rel = quote(&format!(
        "{}/",
        w.host.ledger.releases_dir.trim_end_matches('/')
    ));
    let mut s = format!(
        "echo {SECTION}procs\n\
         pf_pids=\n\
         pf_bin=$(readlink -f -- {bin} 2>/dev/null)\n\
         pf_comm1=$(basename -- {bin} | cut -c1-15)\n\
         pf_comm2=$(basename -- \"${{pf_bin:-{bin}}}\" | cut -c1-15)\n\
         for d in /proc/[0-9]*; do\n\
         \x20 pid=${{d#/proc/}}\n\
         \x20 [ \"$pid\" = \"$$\" ] && continue\n\
         \x20 {{ read -r comm <\"$d/comm\"; }} 2>/dev/null || continue\n\
         \x20 case \"$comm\" in *numary*|\"$pf_comm1\"|\"$pf_comm2\") ;; *) continue ;; esac\n\
         \x20 exe=$(readlink \"$d/exe\" 2>/dev/null)\n\
         \x20 cmd=$(tr '\\0' ' ' <\"$d/cmdline\" 2>/dev/null)\n\
         \x20 why=\n\
         \x20 case \"$exe\" in \"$pf_bin\"|{rel}*) why=binary ;; esac\n\
         \x20 case \"$cmd\" in *{bin}*|*{rel}*) why=binary ;; esac\n"
    );
    if let Some(dir) = w.sqlite_dir {
        let d = quote(&format!("{}/", dir.trim_end_matches('/')));
        let eq = quote(&format!("NUMARY_STORAGE_DIR={}", dir.trim_end_matches('/')));
        s.push_str(&format!(
            "\x20 if [ -z \"$why\" ]; then for fd in \"$d\"/fd/*; do case \"$(readlink \"$fd\" 2>/dev/null)\" in {d}*) why=storage-files; break ;; esac; done; fi\n\
             \x20 if [ -z \"$why\" ] && [ -r \"$d/environ\" ]; then why=$(tr '\\0' '\\n' <\"$d/environ\" | while IFS= read -r l; do case \"$l\" in {eq}) echo storage-dir; break ;; esac; done); fi\n"
        ));
    }
    if w.postgres {
        s.push_str(
            "\x20 if [ -z \"$why\" ] && [ -n \"$NUMARY_STORAGE_POSTGRES_CONN_STRING\" ] && [ -r \"$d/environ\" ]; then why=$(tr '\\0' '\\n' <\"$d/environ\" | while IFS= read -r l; do [ \"$l\" = \"NUMARY_STORAGE_POSTGRES_CONN_STRING=$NUMARY_STORAGE_POSTGRES_CONN_STRING\" ] && { echo same-database; break; }; done); fi\n",
        );
    }
    s.push_str(
        "\x20 [ -n \"$why\" ] && { printf '%s\\t%s\\t%s\\n' \"$pid\" \"$why\" \"$cmd\"; pf_pids=\"$pf_pids $pid:$why\"; }\ndone\n",
    );
    if w.postgres {
        // `pid<TAB>why<TAB>local address<TAB>state` of each TCP socket of those processes
        // (`/proc/net/tcp`, hex): which of them is the node's own server, and the sessions it
        // holds, which `--stop` ends (see `sessions`).
        s.push_str(&format!(
            "echo {SECTION}ports\n\
             for pw in $pf_pids; do\n\
             \x20 pid=${{pw%%:*}}; why=${{pw#*:}}\n\
             \x20 i=\" $(ls -l /proc/$pid/fd 2>/dev/null | sed -n 's/.*socket:\\[\\([0-9]*\\)\\].*/\\1/p' | tr '\\n' ' ')\"\n\
             \x20 cat /proc/$pid/net/tcp* 2>/dev/null | awk -v i=\"$i\" -v p=\"$pid\" -v w=\"$why\" 'index(i, \" \" $10 \" \") {{ print p \"\\t\" w \"\\t\" $2 \"\\t\" $4 }}'\n\
             done\n"
        ));
    }
    s
}

/// The sections of the script's output.
#[derive(Debug, Default, PartialEq, Eq)]
struct Output {
    /// `(label, existing dir, df line)`.
    df: Vec<(String, String, String)>,
    /// `(bytes, file)`.
    sqlite: Vec<(u64, String)>,
    /// `(pid, why, cmdline)`.
    procs: Vec<(String, String, String)>,
    lock: String,
    psql: Vec<String>,
    switch: Vec<String>,
    /// The TCP sockets of the processes in `procs` (Postgres nodes).
    sockets: Vec<super::sessions::Socket>,
    complete: bool,
}

fn parse(stdout: &str) -> Output {
    let mut out = Output::default();
    let mut section = "";
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix(SECTION) {
            section = match name {
                "df" => "df",
                "sqlite" => "sqlite",
                "procs" => "procs",
                "lock" => "lock",
                "psql" => "psql",
                "ports" => "ports",
                "switch" => "switch",
                "end" => {
                    out.complete = true;
                    ""
                }
                _ => "",
            };
            continue;
        }
        match section {
            "df" => {
                let mut parts = line.splitn(3, '\t');
                if let (Some(l), Some(d), Some(df)) = (parts.next(), parts.next(), parts.next()) {
                    out.df.push((l.to_owned(), d.to_owned(), df.to_owned()));
                }
            }
            "sqlite" => {
                if let Some((n, f)) = line.split_once('\t')
                    && let Ok(n) = n.trim().parse()
                {
                    out.sqlite.push((n, f.to_owned()));
                }
            }
            "procs" => {
                let mut parts = line.splitn(3, '\t');
                if let (Some(p), Some(w), Some(c)) = (parts.next(), parts.next(), parts.next()) {
                    out.procs
                        .push((p.to_owned(), w.to_owned(), c.trim().to_owned()));
                }
            }
            "lock" => {
                out.lock.push_str(line);
                out.lock.push('\n');
            }
            "psql" if !line.trim().is_empty() => out.psql.push(line.to_owned()),
            "switch" if !line.trim().is_empty() => out.switch.push(line.trim().to_owned()),
            "ports" => out.sockets.extend(super::sessions::parse_socket(line)),
            _ => {}
        }
    }
    out
}

/// A filesystem as `df -Pk` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fs {
    /// Device and mount point: equal for two dirs on the same filesystem.
    id: String,
    mount: String,
    available: u64,
}

fn parse_df(line: &str) -> Option<Fs> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 6 {
        return None;
    }
    let available: u64 = fields[3].parse().ok()?;
    let mount = fields[5..].join(" ");
    Some(Fs {
        id: format!("{} {mount}", fields[0]),
        mount,
        available: available.saturating_mul(1024),
    })
}

/// What the psql query found.
#[derive(Debug, Default, PartialEq, Eq)]
struct PgReport {
    missing_psql: bool,
    superuser: Option<bool>,
    can_create: Option<bool>,
    /// `(name, installed, available, trusted)`.
    extensions: Vec<(String, bool, bool, bool)>,
    size: Option<u64>,
    ledgers: Option<Vec<String>>,
    /// The other sessions on the database, when the count query answered.
    sessions: Option<Vec<DbSession>>,
    /// Lines that are no row: errors.
    errors: Vec<String>,
}

fn parse_psql(lines: &[String]) -> PgReport {
    let mut r = PgReport::default();
    let t = |s: &str| s == "t";
    let mut sessions = Vec::new();
    let mut counted = false;
    for line in lines {
        if let Some(session) = super::sessions::parse_line(line) {
            sessions.push(session);
            continue;
        }
        let f: Vec<&str> = line.split('|').collect();
        match f.as_slice() {
            ["psql: not found"] => r.missing_psql = true,
            ["role", su, create] => {
                r.superuser = Some(t(su));
                r.can_create = Some(t(create));
            }
            ["ext", name, installed, available, trusted] => {
                r.extensions
                    .push(((*name).to_owned(), t(installed), t(available), t(trusted)))
            }
            ["size", n] => r.size = n.parse().ok(),
            ["sessions", n] => counted = n.parse::<u64>().is_ok(),
            ["ledger", name] => r
                .ledgers
                .get_or_insert_with(Vec::new)
                .push((*name).to_owned()),
            _ => r.errors.push(redact(line.trim())),
        }
    }
    r.sessions = counted.then_some(sessions);
    // A database that answered but has no registry yet lists no ledger: an empty list, as
    // opposed to an unknown one (psql missing or the connection refused).
    if r.ledgers.is_none()
        && r.superuser.is_some()
        && !r.errors.iter().any(|e| e.contains("_system"))
    {
        r.ledgers = Some(Vec::new());
    }
    r
}

/// What one node's script saw that findings about other nodes need.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// Local TCP ports of the `numary` processes found on the node (Postgres nodes to stop).
    pub ports: Vec<u16>,
    /// On the Postgres migrator: the other sessions on the database, or why they are unknown.
    pub sessions: Option<Result<Vec<DbSession>, String>>,
}

/// Every remote finding of one reachable node.
pub(super) async fn findings<T: Transport>(
    t: &T,
    host: &ResolvedHost,
    facts: &HostFacts,
    input: &PreflightInput<'_>,
    scope: &Scope,
    seen: &mut Seen,
) -> Vec<Finding> {
    let name = host.name.as_str();
    let storage = facts.storage.as_ref();
    let driver = storage.map(|s| s.driver);
    let sqlite_dir = storage.and_then(|s| s.sqlite_dir.as_deref());
    let in_backup = Scope::has(&scope.backup, name);
    let in_stage = Scope::has(&scope.stage, name);
    let must_stop = Scope::has(&scope.stopped, name);
    let touched = Scope::has(&scope.touched, name);
    let is_migrator = Scope::has(&scope.migrators, name);
    let postgres = driver == Some(StorageDriver::Postgres);
    let want = Want {
        host,
        disk: in_backup || in_stage,
        sqlite_sizes: sqlite_dir.filter(|_| in_backup && driver == Some(StorageDriver::Sqlite)),
        processes: must_stop,
        sqlite_dir: sqlite_dir.filter(|_| driver == Some(StorageDriver::Sqlite)),
        postgres,
        switch: Scope::has(&scope.switch, name).then_some(facts.installed_version.as_ref()),
        psql: postgres && is_migrator && touched,
        pg_trgm: input.plan.target >= Version::new(1, 8, 0),
    };
    let opts = ExecOptions {
        timeout: Some(SCRIPT_TIMEOUT),
        // Read-only: see `ExecOptions::local_deadline_only`.
        local_deadline_only: true,
        ..Default::default()
    };
    let command = script(&want);
    let (ran, port) = tokio::join!(t.exec(&command, &opts), async {
        // A running node that answered the facts' probe proved the channel works; one that did
        // not is probed too, as the runner's re-check after `--stop` needs the channel.
        if must_stop && facts.api.is_none() {
            probe_port(t, host, facts.service == ServiceState::Stopped).await
        } else {
            None
        }
    });
    let mut out = Vec::new();
    let output = match ran {
        Ok(o) if o.status.success() => parse(&o.stdout_lossy()),
        Ok(o) => {
            let mut p = parse(&o.stdout_lossy());
            p.complete = false;
            p
        }
        Err(e) => {
            out.push(Finding::fail(
                Some(name),
                check::REACHABLE,
                format!("the preflight script did not run: {e}"),
                None,
            ));
            return out;
        }
    };
    if !output.complete {
        out.push(Finding::fail(
            Some(name),
            check::REACHABLE,
            "the preflight script did not run to its end".to_owned(),
            Some(format!(
                "run `fleetup status --limit {name}` and check the node's shell"
            )),
        ));
    }
    let pg = want.psql.then(|| parse_psql(&output.psql));
    seen.ports = super::sessions::server_ports(&output.sockets, &host.ledger.api);
    seen.sessions = pg.as_ref().and_then(|p| match (&p.sessions, p.superuser) {
        (Some(found), _) => Some(Ok(found.clone())),
        _ if p.missing_psql => Some(Err(format!("`psql` is not installed on `{name}`"))),
        // Not connected: the `pg-extensions` finding says why.
        (None, None) => None,
        (None, Some(_)) => {
            Some(Err(p.errors.first().cloned().unwrap_or_else(|| {
                "`pg_stat_activity` gave no answer".to_owned()
            })))
        }
    });

    out.extend(lock_finding(name, host, &output.lock));
    if want.disk {
        out.push(disk_finding(
            name,
            host,
            facts,
            input,
            &output,
            pg.as_ref(),
            in_backup,
            in_stage,
        ));
    }
    if must_stop {
        // A process of another node on the same database (several nodes may share a machine)
        // matters only while the plan migrates that database.
        let storage_migrates = scope
            .migrator_of
            .get(name)
            .is_some_and(|m| Scope::has(&scope.migrate, m));
        let procs: Vec<(String, String, String)> = output
            .procs
            .iter()
            .filter(|(_, why, _)| storage_migrates || why != "same-database")
            .cloned()
            .collect();
        out.extend(process_finding(
            name,
            facts,
            &procs,
            input.plan.stop_running,
        ));
    }
    if let Some(port) = port {
        out.push(port);
    }
    if let Some(pg) = &pg {
        out.push(extensions_finding(name, pg, want.pg_trgm));
    }
    if let Some(current) = want.switch {
        out.push(switch_finding(name, host, current, &output.switch));
    }
    if touched
        && input
            .plan
            .host(name)
            .is_some_and(|h| h.action != HostAction::Decommission)
    {
        out.push(ledgers_finding(name, host, facts, pg.as_ref(), scope));
    }
    out
}

fn lock_finding(name: &str, host: &ResolvedHost, text: &str) -> Option<Finding> {
    let text = text.trim();
    let path = crate::lock::lock_path(host);
    if text.is_empty() {
        return Some(Finding::pass(
            Some(name),
            check::LOCK,
            format!("no fleetup lock (`{path}`)"),
        ));
    }
    Some(Finding::fail(
        Some(name),
        check::LOCK,
        format!("`{path}` is held by {}", describe_lock(text)),
        Some("another `fleetup upgrade` runs, or one died holding it: wait for it to finish; `fleetup upgrade --break-lock` breaks it once its lease expired, or at once when its holder died on this machine".to_owned()),
    ))
}

/// The lock's holder and whether its lease is fresh, in one line, as the runner describes it.
fn describe_lock(text: &str) -> String {
    let held = crate::lock::parse_held(&format!("{}\n", text.trim()));
    redact(&held.describe(crate::lock::LeaseConfig::default().ttl))
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[allow(clippy::too_many_arguments)]
fn disk_finding(
    name: &str,
    host: &ResolvedHost,
    facts: &HostFacts,
    input: &PreflightInput,
    output: &Output,
    pg: Option<&PgReport>,
    in_backup: bool,
    in_stage: bool,
) -> Finding {
    let fs_of = |label: &str| {
        output
            .df
            .iter()
            .find(|(l, _, _)| l == label)
            .and_then(|(_, dir, line)| parse_df(line).map(|fs| (dir.clone(), fs)))
    };
    let mut notes: Vec<String> = Vec::new();
    // Needs per filesystem id: (fs, bytes needed, what).
    let mut needs: BTreeMap<String, (Fs, u64, Vec<String>)> = BTreeMap::new();
    let mut unknown: Vec<String> = Vec::new();
    let mut add =
        |label: &str, dir: &str, bytes: u64, what: String, unknown: &mut Vec<String>| match fs_of(
            label,
        ) {
            Some((_, fs)) => {
                let e = needs.entry(fs.id.clone()).or_insert((fs, 0, Vec::new()));
                e.1 = e.1.saturating_add(bytes);
                e.2.push(what);
            }
            None => unknown.push(format!("free space of `{dir}`")),
        };
    if in_backup {
        let dir = &host.ledger.backup_dir;
        match facts.storage.as_ref().map(|s| s.driver) {
            Some(StorageDriver::Sqlite) => {
                let data: u64 = output.sqlite.iter().map(|(n, _)| n).sum();
                let need = (data as f64 * BACKUP_MARGIN).ceil() as u64;
                add(
                    "backup",
                    dir,
                    need,
                    format!(
                        "backup {} ({} SQLite files, {} ×{BACKUP_MARGIN})",
                        human(need),
                        output.sqlite.len(),
                        human(data)
                    ),
                    &mut unknown,
                );
            }
            Some(StorageDriver::Postgres) => match pg.and_then(|p| p.size) {
                Some(size) => {
                    let need = (size as f64 * BACKUP_MARGIN).ceil() as u64;
                    add(
                        "backup",
                        dir,
                        need,
                        format!(
                            "backup {} (database {} ×{BACKUP_MARGIN})",
                            human(need),
                            human(size)
                        ),
                        &mut unknown,
                    );
                }
                None => {
                    let why = if pg.is_some_and(|p| p.missing_psql) {
                        "`psql` is not installed on the node"
                    } else {
                        "`pg_database_size` could not be read"
                    };
                    notes.push(format!(
                        "warning: the Postgres dump's size is not estimated ({why}): make sure `{dir}` has room for a `pg_dump` of the database"
                    ));
                    add(
                        "backup",
                        dir,
                        0,
                        "backup (size unknown)".to_owned(),
                        &mut unknown,
                    );
                }
            },
            None => {}
        }
    }
    let staged = facts.staged.contains(&input.plan.target);
    if in_stage && !staged {
        let dir = &host.ledger.releases_dir;
        let (bytes, what) = match input.binary {
            BinarySource::File { path, .. } => match std::fs::metadata(path) {
                Ok(m) => (m.len(), format!("binary {}", human(m.len()))),
                Err(_) => (0, "binary (size unknown)".to_owned()),
            },
            BinarySource::Url { .. } => (
                URL_BINARY_ASSUMED,
                format!(
                    "binary ≤ {} (downloaded, size assumed)",
                    human(URL_BINARY_ASSUMED)
                ),
            ),
        };
        add("releases", dir, bytes, what, &mut unknown);
    } else if in_stage {
        notes.push(format!("`{}` already staged", input.plan.target));
    }
    let mut short = Vec::new();
    let mut fine = Vec::new();
    for (fs, need, what) in needs.values() {
        let line = format!(
            "{} on `{}`: needs {}, {} free",
            what.join(" + "),
            fs.mount,
            human(*need),
            human(fs.available)
        );
        if *need > fs.available {
            short.push(line);
        } else {
            fine.push(line);
        }
    }
    if !unknown.is_empty() {
        short.push(format!("cannot read the {}", unknown.join(", ")));
    }
    if short.is_empty() {
        fine.extend(notes);
        Finding::pass(Some(name), check::DISK_SPACE, fine.join("; "))
    } else {
        short.extend(fine);
        short.extend(notes);
        Finding::fail(
            Some(name),
            check::DISK_SPACE,
            short.join("; "),
            Some("free some space, or point `ledger.backup_dir` / `ledger.releases_dir` at a filesystem with room".to_owned()),
        )
    }
}

fn process_finding(
    name: &str,
    facts: &HostFacts,
    procs: &[(String, String, String)],
    stop_running: bool,
) -> Option<Finding> {
    if procs.is_empty() {
        return Some(Finding::pass(
            Some(name),
            check::STOPPED,
            if facts.service == ServiceState::Stopped {
                "the service manager says stopped and no `numary` process uses the node's binary or storage".to_owned()
            } else {
                "no `numary` process uses the node's binary or storage".to_owned()
            },
        ));
    }
    let list: Vec<String> = procs
        .iter()
        .map(|(pid, why, cmd)| {
            let why = match why.as_str() {
                "binary" => "runs the node's binary",
                "storage-files" => "holds the SQLite files open",
                "storage-dir" => "uses the SQLite storage dir",
                "same-database" => "uses the same Postgres database",
                other => other,
            };
            format!("pid {pid} {why} (`{}`)", redact(cmd))
        })
        .collect();
    match facts.service {
        // The service's own process, expected; `--stop` or the plan's `running` blocker deal with it.
        ServiceState::Running if stop_running => None,
        ServiceState::Running => None,
        _ => Some(Finding::fail(
            Some(name),
            check::STOPPED,
            format!(
                "the service manager does not say running, yet a `numary` process uses this node's storage: {}",
                list.join("; ")
            ),
            Some("stop that process cleanly (it runs outside the service manager, so `--stop` would not stop it), then check again".to_owned()),
        )),
    }
}

/// The API port of a node to stop. `stopped`: the service manager says so, and anything that
/// answers is a blocker; otherwise (it runs, `--stop` stops it) only a port that cannot be
/// probed is reported, as the runner's re-check after the stop could not probe it either.
async fn probe_port<T: Transport>(t: &T, host: &ResolvedHost, stopped: bool) -> Option<Finding> {
    let name = host.name.as_str();
    let api = &host.ledger.api;
    // `host:port` or `[v6]:port`, as the facts' API probe reads it.
    let parsed = api.rsplit_once(':').and_then(|(h, p)| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        Some((h.to_owned(), p.parse::<u16>().ok()?))
    });
    let Some((addr, port)) = parsed else {
        return Some(Finding::fail(
            Some(name),
            check::API_PORT,
            format!("`ledger.api` (`{api}`) is not host:port"),
            None,
        ));
    };
    let listens = || {
        Some(format!(
            "find what listens there (`ss -ltnp | grep :{port}`) and stop it"
        ))
    };
    match t.http_get(&addr, port, "/_info", PORT_TIMEOUT).await {
        Err(e @ HttpError::Refused { .. }) => Some(Finding::fail(
            Some(name),
            check::API_PORT,
            format!(
                "cannot check the API port of `{name}`: sshd refuses port forwarding, so whether something holds `{api}` is unknown ({e})"
            ),
            Some(HttpError::FORWARDING_HINT.to_owned()),
        )),
        _ if !stopped => None,
        Err(HttpError::Connect { .. }) => Some(Finding::pass(
            Some(name),
            check::API_PORT,
            format!("nothing answers on `{api}`"),
        )),
        // The facts were read a moment ago: a start still in flight then (a run that died
        // leaves its remote commands running) is the service's own server, not a squatter.
        Ok(_) if crate::runner::service_running(t, &host.ledger.service).await == Some(true) => {
            Some(Finding::fail(
                Some(name),
                check::API_PORT,
                "the service was stopped when the facts were read and runs now: something started it while this check ran".to_owned(),
                Some("a run that died may have left a start in flight, or another tool started it: wait a moment and check again".to_owned()),
            ))
        }
        Ok(r) => Some(Finding::fail(
            Some(name),
            check::API_PORT,
            format!(
                "something answers HTTP {} on `{api}` although the service is stopped: the new server could not bind it",
                r.status
            ),
            listens(),
        )),
        Err(e) => Some(Finding::fail(
            Some(name),
            check::API_PORT,
            format!("something holds `{api}` although the service is stopped: {e}"),
            listens(),
        )),
    }
}

fn extensions_finding(name: &str, pg: &PgReport, pg_trgm: bool) -> Finding {
    let needed = if pg_trgm {
        "`pgcrypto` and `pg_trgm`"
    } else {
        "`pgcrypto`"
    };
    if pg.missing_psql {
        return Finding::pass(
            Some(name),
            check::PG_EXTENSIONS,
            format!(
                "warning: not verified, `psql` is not installed on `{name}`: {needed} must exist in the database or the role must be allowed to create them"
            ),
        );
    }
    let Some(superuser) = pg.superuser else {
        return Finding::fail(
            Some(name),
            check::PG_EXTENSIONS,
            format!(
                "cannot query the database with the service's connection string: {}",
                pg.errors.first().map_or("no answer", String::as_str)
            ),
            Some("check `NUMARY_STORAGE_POSTGRES_CONN_STRING` in the service's environment file and that the database accepts the node".to_owned()),
        );
    };
    let can_create = pg.can_create.unwrap_or(false);
    let mut fine = Vec::new();
    let mut bad = Vec::new();
    for (ext, installed, available, trusted) in &pg.extensions {
        if *installed {
            fine.push(format!("`{ext}` installed"));
        } else if !available {
            bad.push(format!(
                "`{ext}` is not installed and the server does not ship it"
            ));
        } else if superuser || (*trusted && can_create) {
            fine.push(format!("`{ext}` creatable by the role"));
        } else {
            bad.push(format!(
                "`{ext}` is not installed and the role may not create it"
            ));
        }
    }
    if pg.extensions.is_empty() {
        bad.push("the extension query gave no answer".to_owned());
    }
    if bad.is_empty() {
        Finding::pass(Some(name), check::PG_EXTENSIONS, fine.join(", "))
    } else {
        let missing: Vec<&str> = pg
            .extensions
            .iter()
            .filter(|(_, i, _, _)| !i)
            .map(|(e, _, _, _)| e.as_str())
            .collect();
        let create: Vec<String> = missing
            .iter()
            .map(|e| format!("CREATE EXTENSION IF NOT EXISTS {e};"))
            .collect();
        Finding::fail(
            Some(name),
            check::PG_EXTENSIONS,
            bad.join("; "),
            Some(format!(
                "have a superuser run `{}` in the ledger's database (package `postgresql-contrib` ships them); numary creates them at every start and fails without them",
                create.join(" ")
            )),
        )
    }
}

fn ledgers_finding(
    name: &str,
    host: &ResolvedHost,
    facts: &HostFacts,
    pg: Option<&PgReport>,
    scope: &Scope,
) -> Finding {
    let (reported, source): (Option<&[String]>, String) = if !facts.ledgers_source.is_empty() {
        let source = match facts.ledgers_source.as_str() {
            "api" => "`/_info`".to_owned(),
            "sqlite-files" => "the SQLite files".to_owned(),
            other => format!("`{other}`"),
        };
        (Some(&facts.ledgers), source)
    } else if let Some(l) = pg.and_then(|p| p.ledgers.as_deref()) {
        (Some(l), "`_system.ledgers`".to_owned())
    } else {
        (None, String::new())
    };
    let expected = host.ledger.ledgers.as_deref();
    let invalid: Vec<String> = expected
        .unwrap_or_default()
        .iter()
        .filter_map(|l| validate_ledger_name(l).err().map(|e| e.to_string()))
        .collect();
    if !invalid.is_empty() {
        return Finding::fail(
            Some(name),
            check::LEDGERS,
            invalid.join("; "),
            Some("fix `ledger.ledgers` in the inventory".to_owned()),
        );
    }
    let quoted = |l: &[String]| {
        if l.is_empty() {
            "none".to_owned()
        } else {
            l.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let Some(reported) = reported else {
        let migrator = scope.migrator_of.get(name).map(String::as_str);
        let elsewhere = match (migrator, facts.storage.as_ref().map(|s| s.driver)) {
            (Some(m), Some(StorageDriver::Postgres)) if m != name => {
                format!(" (the shared database is checked on `{m}`)")
            }
            _ => String::new(),
        };
        return Finding::pass(
            Some(name),
            check::LEDGERS,
            format!(
                "warning: the node's ledgers are not known before the migration{elsewhere}; `storage list` is checked against the inventory then"
            ),
        );
    };
    match expected {
        None => Finding::pass(
            Some(name),
            check::LEDGERS,
            format!(
                "ledgers (from {source}): {}; the inventory names none",
                quoted(reported)
            ),
        ),
        Some(expected) => {
            let missing: Vec<String> = expected
                .iter()
                .filter(|l| !reported.contains(l))
                .cloned()
                .collect();
            if missing.is_empty() {
                Finding::pass(
                    Some(name),
                    check::LEDGERS,
                    format!(
                        "the inventory's ledgers {} are all present (from {source})",
                        quoted(expected)
                    ),
                )
            } else {
                Finding::fail(
                    Some(name),
                    check::LEDGERS,
                    format!(
                        "the inventory names {} that `{name}` does not have (it has {}, from {source})",
                        if missing.len() == 1 {
                            format!("ledger `{}`", missing[0])
                        } else {
                            format!("ledgers {}", quoted(&missing))
                        },
                        quoted(reported)
                    ),
                    Some("fix the spelling in the inventory's `ledgers` (a typo passed to `storage upgrade` would create an empty ledger of that name), or remove the ledgers this node does not hold".to_owned()),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_line_parses_and_scales_to_bytes() {
        let fs = parse_df("/dev/sda1 102400 50000 52400 49% /var lib").unwrap();
        assert_eq!(fs.available, 52400 * 1024);
        assert_eq!(fs.mount, "/var lib");
        assert_eq!(fs.id, "/dev/sda1 /var lib");
        assert_eq!(
            parse_df("Filesystem 1024-blocks Used Available Capacity Mounted on"),
            None
        );
    }

    #[test]
    fn script_output_sections() {
        let text = format!(
            "{SECTION}df\nbackup\t/var/backups\t/dev/x 10 5 5 50% /\n{SECTION}sqlite\n1024\tnumary_a.db\n{SECTION}procs\n42\tstorage-dir\t/bin/numary server start \n{SECTION}lock\n{{\"run_id\":\"r1\"}}\n{SECTION}psql\nrole|f|t\next|pgcrypto|t|t|t\next|pg_trgm|f|t|t\nsize|2048\nledger|a\n{SECTION}end\n"
        );
        let out = parse(&text);
        assert!(out.complete);
        assert_eq!(out.df.len(), 1);
        assert_eq!(out.sqlite, vec![(1024, "numary_a.db".to_owned())]);
        assert_eq!(out.procs[0].0, "42");
        assert_eq!(out.procs[0].2, "/bin/numary server start");
        assert_eq!(out.lock, "{\"run_id\":\"r1\"}\n");
        let pg = parse_psql(&out.psql);
        assert_eq!(pg.superuser, Some(false));
        assert_eq!(pg.can_create, Some(true));
        assert_eq!(pg.size, Some(2048));
        assert_eq!(pg.ledgers, Some(vec!["a".to_owned()]));
        assert_eq!(pg.extensions.len(), 2);
        assert!(pg.errors.is_empty());
    }

    #[test]
    fn psql_errors_are_redacted_and_leave_ledgers_unknown() {
        let pg = parse_psql(&[
            "psql: error: connection to postgresql://u:hunter2@db/x failed".to_owned(),
        ]);
        assert_eq!(pg.superuser, None);
        assert_eq!(pg.ledgers, None);
        assert!(!pg.errors[0].contains("hunter2"), "{:?}", pg.errors);
        let none = parse_psql(&["psql: not found".to_owned()]);
        assert!(none.missing_psql);
    }

    /// Runs [`switch_probe`] here on a real layout and returns its finding.
    fn switch_on(h: &ResolvedHost, current: Option<&Version>) -> Finding {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(switch_probe(h, current))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<String> = text.lines().skip(1).map(|l| l.trim().to_owned()).collect();
        switch_finding("n", h, current, &lines)
    }

    #[test]
    fn switch_preconditions_are_read_before_anything_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut h = crate::runner::tests::host("n");
        h.ledger.binary = tmp.path().join("bin/numary").display().to_string();
        h.ledger.releases_dir = tmp.path().join("releases").display().to_string();
        std::fs::create_dir_all(tmp.path().join("bin")).unwrap();
        let old = tmp.path().join("releases/1.7.4");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("numary"), "release 1.7.4").unwrap();
        let v174 = Version::new(1, 7, 4);

        std::os::unix::fs::symlink(old.join("numary"), &h.ledger.binary).unwrap();
        let link = switch_on(&h, Some(&v174));
        assert!(link.ok && link.detail.contains("a symlink"), "{link:?}");

        // A plain file equal to its release, or with no release kept yet: the switch keeps it.
        std::fs::remove_file(&h.ledger.binary).unwrap();
        std::fs::write(&h.ledger.binary, "release 1.7.4").unwrap();
        assert!(switch_on(&h, Some(&v174)).ok);
        let v161 = Version::new(1, 6, 1);
        let creatable = switch_on(&h, Some(&v161));
        assert!(creatable.ok, "{creatable:?}");

        // A different plain file: switch.rs would refuse (exit 4) after the migration.
        std::fs::write(&h.ledger.binary, "patched by hand").unwrap();
        let differs = switch_on(&h, Some(&v174));
        assert!(!differs.ok, "{differs:?}");
        assert!(differs.detail.contains("differs from"), "{differs:?}");
        let unknown = switch_on(&h, None);
        assert!(
            !unknown.ok && unknown.detail.contains("unknown version"),
            "{unknown:?}"
        );

        // Nothing was written by the probe.
        assert!(!tmp.path().join("releases/1.6.1").exists());
        assert_eq!(
            std::fs::read_to_string(&h.ledger.binary).unwrap(),
            "patched by hand"
        );
        assert!(
            switch_finding("n", &h, None, &[])
                .detail
                .contains("could not be read")
        );
    }

    #[test]
    fn lock_holder_as_the_runner_writes_it() {
        let owner = crate::lock::LockOwner {
            user: "ops".into(),
            local_host: "laptop".into(),
            run_id: "20260125T174502Z-3f9a0c".into(),
            pid: 4242,
            started_at: "2026-01-25T17:45:02Z".into(),
            fleetup_version: "0.1.0".into(),
            command: "upgrade".into(),
            process: None,
        };
        let json = serde_json::to_string(&owner).unwrap();
        let d = describe_lock(&format!("held\n{json}\n"));
        assert!(d.starts_with(&owner.describe()), "{d}");
        assert!(
            d.contains("ops@laptop") && d.contains("20260125T174502Z-3f9a0c"),
            "{d}"
        );
        assert!(describe_lock("held\n\n").contains("no owner file"));
        // The lease, judged on the node's clock the script printed.
        let leased = format!(
            "{},\"lease\":{{\"ttl_secs\":60,\"refresh_secs\":10,\"refreshed_at\":1700000000}}}}",
            json.strip_suffix('}').unwrap()
        );
        let fresh = describe_lock(&format!("held\nfleetup-lock 1700000020 1\n{leased}\n"));
        assert!(fresh.ends_with("; lease fresh (expires in 40s)"), "{fresh}");
        let expired = describe_lock(&format!("held\nfleetup-lock 1700000300 1\n{leased}\n"));
        assert!(expired.ends_with("; lease expired (4m ago)"), "{expired}");
        let orphan = describe_lock("held\nfleetup-lock 1700000300 1700000000\n\n");
        assert!(
            orphan.contains("no owner file")
                && orphan
                    .ends_with("no lease, counted from the lock's last change: expired (4m ago)"),
            "{orphan}"
        );
    }
}
