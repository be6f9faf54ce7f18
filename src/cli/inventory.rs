//! `fleetup inventory check|list`.

use clap::Subcommand;

use super::Global;

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Validate the inventory: syntax, types, values and cross-references (all reported at once).
    Check,
    /// Print the resolved hosts (after `--limit`).
    List,
}

pub fn run(_global: &Global, _cmd: &InventoryCommand) -> anyhow::Result<i32> {
    anyhow::bail!("inventory: not implemented yet")
}
