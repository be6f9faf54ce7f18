//! The upgrade plan as data: a pure function from (resolved inventory, per-host facts, target,
//! options) to an ordered list of steps. The runner executes it; the dry run prints it.
