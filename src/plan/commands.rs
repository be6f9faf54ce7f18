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

pub fn backup_sqlite(env_file: Option<&str>, dst: &str) -> String {
    format!(
        "{env}{SUMS}src=\"${{NUMARY_STORAGE_DIR:-$HOME/.numary/data}}\"; n=\"${{NUMARY_STORAGE_SQLITE_DB_NAME:-numary}}\"; dst={dst}; \
         echo \"==dir $src\"; echo \"==name $n\"; cd \"$src\" || exit 3; set -- \"$n\"_*.db; \
         [ -e \"$1\" ] || {{ echo \"no ${{n}}_*.db file in $src\" >&2; exit 3; }}; \
         umask 077; mkdir -p \"$dst\" || exit 4; cp -p -- \"$@\" \"$dst\"/ || exit 4; sync; \
         echo ==orig; sums \"$@\" || exit 5; cd \"$dst\" || exit 5; echo ==copy; sums \"$@\" || exit 5",
        env = node::env_prefix_with(env_file),
        dst = quote(dst),
    )
}

pub fn backup_postgres(env_file: Option<&str>, dir: &str) -> String {
    let file = format!("{dir}/{DUMP_FILE}");
    format!(
        "{env}command -v pg_dump >/dev/null 2>&1 && command -v pg_restore >/dev/null 2>&1 || {{ echo 'pg_dump and pg_restore must be installed on the node (postgresql-client)' >&2; exit 7; }}; \
         f={f}; umask 077; mkdir -p {d} || exit 4; \
         ( {pgenv} && exec pg_dump --format=custom --file=\"$f\" ) || exit 8; \
         pg_restore --list \"$f\" > \"$f.list\" || exit 9; \
         awk '$4 == \"SCHEMA\" {{ print \"==schema \" $6 }}' \"$f.list\"; rm -f \"$f.list\"; \
         h=$(sha256sum < \"$f\") && s=$(wc -c < \"$f\") && printf '==dump %s %s\\n' \"${{h%% *}}\" \"$((s))\"",
        env = node::env_prefix_with(env_file),
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

/// The swap script: `link` (the node's `ledger.binary`) becomes a symlink to `release`. Prints
/// `prev-link TARGET`, `prev-file KEPT_AT` or `prev-none`, then `now TARGET`. `keep_plain_as`:
/// the release dir a plain-file binary is first kept in (`None`: its version is unknown, and a
/// plain file is not replaced).
pub fn switch_to_command(link: &str, release: &str, keep_plain_as: Option<&str>) -> String {
    let keep = match keep_plain_as {
        Some(o) => format!(
            "o={o}; if [ -e \"$o/numary\" ]; then cmp -s \"$b\" \"$o/numary\" || {{ echo \"$b is a plain file that differs from $o/numary: not replacing it\" >&2; exit 4; }}; \
             else mkdir -p \"$o\" && cp -p \"$b\" \"$o/numary.fleetup-part\" && mv -f \"$o/numary.fleetup-part\" \"$o/numary\" || exit 5; fi; \
             echo \"prev-file $o/numary\"",
            o = quote(o)
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
        b = quote(link),
        n = quote(release),
    )
}

/// Succeeds when `link` (the node's `ledger.binary`) resolves to the same file as `release` (the
/// probe of the rollback's switch back).
pub fn resolves_to_command(link: &str, release: &str) -> String {
    format!(
        "b=$(readlink -f {b}) && r=$(readlink -f {r}) && [ -n \"$r\" ] && [ \"$b\" = \"$r\" ]",
        b = quote(link),
        r = quote(release),
    )
}

/// Restores a Postgres backup of fleetup over the same database, nodes stopped: the dump's
/// SHA-256 is compared with the one the journal recorded and the dump read back with
/// `pg_restore --list` before anything changes; then the schemas the dump holds (the ledgers and
/// `_system`, not `public`) are dropped with what a later migration added to them, and the dump
/// restored with `pg_restore --clean --if-exists` in one transaction. The connection comes from
/// the env file's conn string through libpq's variables, never an argument.
pub fn restore_postgres(env_file: Option<&str>, dump: &str, sha256: &str) -> String {
    format!(
        "{env}command -v pg_restore >/dev/null 2>&1 && command -v psql >/dev/null 2>&1 || {{ echo 'pg_restore and psql must be installed on the node (postgresql-client)' >&2; exit 7; }}; \
         f={f}; [ -f \"$f\" ] || {{ echo \"no backup $f on the node\" >&2; exit 3; }}; \
         h=$(sha256sum < \"$f\") && h=${{h%% *}}; \
         [ \"$h\" = {s} ] || {{ echo \"$f has sha256 $h, the journal recorded {s}: not restoring it\" >&2; exit 9; }}; \
         l=$(pg_restore --list \"$f\") || {{ echo \"pg_restore --list cannot read $f\" >&2; exit 9; }}; \
         {pgenv} || exit 6; d=\"${{PGDATABASE:-${{PGUSER:-$(id -un)}}}}\"; \
         printf '%s\\n' \"$l\" | awk '$4 == \"SCHEMA\" && $6 != \"public\" {{ print $6 }}' | \
           while IFS= read -r x; do x=$(printf '%s' \"$x\" | sed 's/\"//g'); printf 'DROP SCHEMA IF EXISTS \"%s\" CASCADE;\\n' \"$x\"; done | \
           PGCONNECT_TIMEOUT=10 psql -X -q -v ON_ERROR_STOP=1 --single-transaction -d \"$d\" >/dev/null || exit 8; \
         pg_restore --clean --if-exists --single-transaction --exit-on-error --dbname=\"$d\" \"$f\" || exit 8; \
         printf '==restored %s\\n' \"$h\"",
        env = node::env_prefix_with(env_file),
        pgenv = crate::node::pg_env_from_conn_string(),
        f = quote(dump),
        s = quote(sha256),
    )
}

/// Restores a SQLite backup of fleetup, node stopped: each backed-up copy's SHA-256 is compared
/// with the journal's (`files`: name, sha256) first; then each is copied over the storage dir
/// (through a temp file and a rename), a stale journal or WAL of it removed, and the restored
/// files' sums printed after `==restored` for the runner to compare.
pub fn restore_sqlite(env_file: Option<&str>, backup: &str, files: &[(String, String)]) -> String {
    let mut check = String::new();
    let mut names = Vec::new();
    for (name, sha) in files {
        let n = quote(name);
        check.push_str(&format!(
            "h=$(sha256sum < \"$bk\"/{n}) && h=${{h%% *}} || exit 3; [ \"$h\" = {s} ] || {{ echo \"$bk/\"{n}\" has sha256 $h, the journal recorded {s}: not restoring\" >&2; exit 9; }}; ",
            s = quote(sha),
        ));
        names.push(n);
    }
    let names = names.join(" ");
    format!(
        "{env}{SUMS}src=\"${{NUMARY_STORAGE_DIR:-$HOME/.numary/data}}\"; bk={bk}; \
         [ -d \"$bk\" ] || {{ echo \"no backup $bk on the node\" >&2; exit 3; }}; [ -d \"$src\" ] || exit 3; \
         {check}\
         for f in {names}; do cp -p -- \"$bk/$f\" \"$src/$f.fleetup-restore\" && mv -f -- \"$src/$f.fleetup-restore\" \"$src/$f\" || exit 4; \
         rm -f -- \"$src/$f-journal\" \"$src/$f-wal\" \"$src/$f-shm\"; done; sync; \
         echo \"==dir $src\"; echo ==restored; cd \"$src\" || exit 5; sums {names} || exit 5",
        env = node::env_prefix_with(env_file),
        bk = quote(backup),
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
pub fn http_probe(api: &str, path: &str) -> String {
    format!("# GET http://{api}{path} (through the SSH connection)")
}

/// How holding the database's migration lock shows among the commands (a `psql` session kept
/// open on a channel of its own, see [`crate::dblock`]).
pub fn db_lock_line() -> String {
    format!(
        "# hold pg_try_advisory_lock({}) in a psql session of its own, named after the run",
        crate::dblock::MIGRATE_LOCK_KEY
    )
}
