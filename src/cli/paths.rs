//! `fleetup paths`: the table, or the verdict for `--from C --to T`.

use clap::Args;

use super::Global;

#[derive(Debug, Args)]
pub struct PathsArgs {
    /// Current version of the node.
    #[arg(long)]
    pub from: Option<String>,
    /// Target version.
    #[arg(long)]
    pub to: Option<String>,
}

pub fn run(_global: &Global, _args: &PathsArgs) -> anyhow::Result<i32> {
    anyhow::bail!("paths: not implemented yet")
}
