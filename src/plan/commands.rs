//! The remote command lines of every step, built in one place: the plan prints them (`fleetup
//! check`, with `@RUN_ID@` for the run id) and the runner runs exactly these. Every interpolated
//! value goes through [`crate::shell::quote`]; connection strings never appear: commands source
//! the service's environment file and hand libpq its own variables.

use crate::inventory::ResolvedHost;
use crate::node;
use crate::shell::quote;
use crate::version::Version;

/// The name of the Postgres dump inside the run's backup dir.
pub const DUMP_FILE: &str = "postgres.dump";


/// `<backup_dir>/<run_id>`.
pub fn backup_dir(host: &ResolvedHost, run_id: &str) -> String {
    format!("{}/{run_id}", host.ledger.backup_dir.trim_end_matches('/'))
}

const SUMS: &str = "sums() { for f; do h=$(sha256sum < \"$f\") || return 1; s=$(wc -c < \"$f\") || return 1; printf '%s %s %s\\n' \"${h%% *}\" \"$((s))\" \"$f\"; done; }; ";

pub fn backup_sqlite(host: &ResolvedHost, dst: &str) -> String {
    format!(
        "{env}{SUMS}src=\"${{NUMARY_STORAGE_DIR:-$HOME/.numary/data}}\"; n=\"${{NUMARY_STORAGE_SQLITE_DB_NAME:-numary}}\"; dst={dst}; \
         echo \"==dir $src\"; echo \"==name $n\"; cd \"$src\" || exit 3; set -- \"$n\"_*.db; \
         [ -e \"$1\" ] || {{ echo \"no ${{n}}_*.db file in $src\" >&2; exit 3; }}; \
         umask 077; mkdir -p \"$dst\" || exit 4; cp -p -- \"$@\" \"$dst\"/ || exit 4; sync; \
         echo ==orig; sums \"$@\" || exit 5; cd \"$dst\" || exit 5; echo ==copy; sums \"$@\" || exit 5",
        env = node::env_prefix(host),
        dst = quote(dst),
    )
}

pub fn backup_postgres(host: &ResolvedHost, dir: &str) -> String {
    let file = format!("{dir}/{DUMP_FILE}");
    format!(
        "{env}command -v pg_dump >/dev/null 2>&1 && command -v pg_restore >/dev/null 2>&1 || {{ echo 'pg_dump and pg_restore must be installed on the node (postgresql-client)' >&2; exit 7; }}; \
         f={f}; umask 077; mkdir -p {d} || exit 4; \
         ( {pgenv} && exec pg_dump --format=custom --file=\"$f\" ) || exit 8; \
         pg_restore --list \"$f\" > \"$f.list\" || exit 9; \
         awk '$4 == \"SCHEMA\" {{ print \"==schema \" $6 }}' \"$f.list\"; rm -f \"$f.list\"; \
         h=$(sha256sum < \"$f\") && s=$(wc -c < \"$f\") && printf '==dump %s %s\\n' \"${{h%% *}}\" \"$((s))\"",
        env = node::env_prefix(host),
        pgenv = crate::node::pg_env_from_conn_string(),
        f = quote(&file),
        d = quote(dir),
    )
}

/// `<releases_dir>/<V>`.
pub fn release_dir(host: &ResolvedHost, v: &Version) -> String {
    format!("{}/{v}", host.ledger.releases_dir.trim_end_matches('/'))
}

/// `<releases_dir>/<V>/numary`.
pub fn release_binary(host: &ResolvedHost, v: &Version) -> String {
    format!("{}/numary", release_dir(host, v))
}

pub fn download_command(dir: &str, url: &str, sha256: &str) -> String {
    format!(
        "d={d}; p=\"$d/numary.fleetup-part\"; mkdir -p \"$d\" || exit 4; \
         if command -v curl >/dev/null 2>&1; then curl -fsSL --retry 2 -o \"$p\" {u} || {{ rm -f \"$p\"; exit 8; }}; \
         elif command -v wget >/dev/null 2>&1; then wget -q -O \"$p\" {u} || {{ rm -f \"$p\"; exit 8; }}; \
         else echo 'neither curl nor wget is installed on the node' >&2; exit 7; fi; \
         h=$(sha256sum < \"$p\") && h=${{h%% *}}; \
         if [ \"$h\" != {s} ]; then rm -f \"$p\"; echo \"the download has sha256 $h, expected {s}\" >&2; exit 9; fi; \
         chmod 0755 \"$p\" && mv -f \"$p\" \"$d/numary\"",
        d = quote(dir),
        u = quote(url),
        s = quote(sha256),
    )
}

/// The swap script. Prints `prev-link TARGET`, `prev-file KEPT_AT` or `prev-none`, then
/// `now TARGET`.
pub fn switch_command(host: &ResolvedHost, target: &Version, current: Option<&Version>) -> String {
    let bin = &host.ledger.binary;
    let keep = match current {
        Some(v) => format!(
            "o={o}; if [ -e \"$o/numary\" ]; then cmp -s \"$b\" \"$o/numary\" || {{ echo \"$b is a plain file that differs from $o/numary: not replacing it\" >&2; exit 4; }}; \
             else mkdir -p \"$o\" && cp -p \"$b\" \"$o/numary.fleetup-part\" && mv -f \"$o/numary.fleetup-part\" \"$o/numary\" || exit 5; fi; \
             echo \"prev-file $o/numary\"",
            o = quote(&release_dir(host, v))
        ),
        None => "echo \"$b is a plain file of unknown version: not replacing it\" >&2; exit 4"
            .to_string(),
    };
    format!(
        "b={b}; n={n}; [ -x \"$n\" ] || {{ echo \"$n is not staged\" >&2; exit 3; }}; \
         if [ -L \"$b\" ]; then echo \"prev-link $(readlink \"$b\")\"; \
         elif [ -f \"$b\" ]; then {keep}; \
         else echo prev-none; fi; \
         ln -sfn \"$n\" \"$b.fleetup-new\" && mv -Tf \"$b.fleetup-new\" \"$b\" || {{ rm -f \"$b.fleetup-new\"; exit 6; }}; \
         echo \"now $(readlink \"$b\")\"",
        b = quote(bin),
        n = quote(&release_binary(host, target)),
    )
}

/// The shell lines that list hot SQLite journals and the pids holding files of the storage dir
/// open, between marker lines, for [`parse_storage_use`].
pub fn storage_use_command(dir: &str) -> String {
    // One `find` over every process's fds (a `readlink` per fd would fork thousands of times).
    format!(
        "echo ==journals; {list}; echo ==open; \
         find /proc/[0-9]*/fd -maxdepth 1 -lname {pattern} 2>/dev/null | cut -d/ -f3 | sort -u; true",
        list = node::list_sqlite_dir(dir),
        pattern = quote(&format!("{}/*", dir.trim_end_matches('/'))),
    )
}

/// `mkdir -p DIR`.
pub fn mkdir(dir: &str) -> String {
    format!("mkdir -p {}", quote(dir))
}

/// How an upload from this machine shows among the commands (it runs over SFTP-less `cat`
/// through the SSH connection, verified on the host: see [`crate::ssh::Transport::upload`]).
pub fn upload_line(local: &str, remote: &str) -> String {
    format!("# upload `{local}` to {}", quote(remote))
}

/// How an HTTP probe through the node's SSH connection shows among the commands (no shell
/// command runs: the request goes over a forwarded channel).
pub fn http_probe(host: &ResolvedHost, path: &str) -> String {
    format!(
        "# GET http://{}{path} (through the SSH connection)",
        host.ledger.api
    )
}

/// How holding the database's migration lock shows among the commands (a `psql` session kept
/// open on a channel of its own, see [`crate::dblock`]).
pub fn db_lock_line() -> String {
    format!(
        "# hold pg_try_advisory_lock({}) in a psql session of its own, named after the run",
        crate::dblock::MIGRATE_LOCK_KEY
    )
}
