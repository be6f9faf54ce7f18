//! Process exit codes of `fleetup`, one constant each. Documented in `docs/exit-codes.md`;
//! keep the two in step.

/// Everything asked was done (or, for `check`, the fleet is ready to upgrade).
pub const SUCCESS: i32 = 0;
/// A run started and failed on at least one host (a command failed, a node did not become healthy).
pub const FAILURE: i32 = 1;
/// The command line, the inventory or a policy file is wrong; nothing was contacted.
pub const USAGE: i32 = 2;
/// `--limit` (or the inventory) selected no host, or one of its patterns matched nothing.
pub const NO_HOSTS: i32 = 3;
/// At least one host could not be reached, refused authentication, or presented an unknown or
/// changed host key.
pub const UNREACHABLE: i32 = 4;
/// A precondition blocks the work: unsupported upgrade path, a node still running, a hot SQLite
/// journal, a failed preflight check. Nothing was changed.
pub const BLOCKED: i32 = 5;
/// Another fleetup run holds the fleet lock.
pub const LOCK_HELD: i32 = 6;
/// `check`: every selected node already runs the target; there is nothing to do.
pub const NOTHING_TO_DO: i32 = 7;
/// The run was cancelled (Ctrl-C or SIGTERM) before it finished; `fleetup upgrade --resume`
/// continues it. 128 + SIGINT, as shells report an interrupted command.
pub const CANCELLED: i32 = 130;
/// Internal error (a bug in fleetup): please report it.
pub const INTERNAL: i32 = 70;

/// Name of an exit code, for docs and JSON output.
pub fn name(code: i32) -> &'static str {
    match code {
        SUCCESS => "success",
        FAILURE => "failure",
        USAGE => "usage",
        NO_HOSTS => "no-hosts",
        UNREACHABLE => "unreachable",
        BLOCKED => "blocked",
        LOCK_HELD => "lock-held",
        NOTHING_TO_DO => "nothing-to-do",
        CANCELLED => "cancelled",
        INTERNAL => "internal",
        _ => "unknown",
    }
}
