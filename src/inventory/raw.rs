//! The inventory file exactly as written: serde shapes with `deny_unknown_fields`, every value a
//! validated newtype, spans kept where the second pass needs to point at a line.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use toml::Spanned;

use crate::version::Version;

use super::values::{
    Address, ApiAddr, DurationOrZero, GroupName, HostName, HttpUrl, HumanDuration, JumpHost,
    LedgerList, LocalPath, Port, RemotePath, Sha256Hex, ShellCommand, StorageName, UnitName,
    UserName,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    #[serde(default)]
    pub ssh: RawSsh,
    #[serde(default)]
    pub ledger: RawLedger,
    #[serde(default)]
    pub rollout: RawRollout,
    #[serde(default)]
    pub groups: BTreeMap<Spanned<GroupName>, RawGroup>,
    #[serde(default, rename = "host")]
    pub hosts: Vec<Spanned<RawHost>>,
    #[serde(default)]
    pub releases: BTreeMap<Spanned<Version>, Spanned<RawRelease>>,
}

/// `[ssh]`, `[groups.NAME.ssh]`, `[host.ssh]`: every key optional, set keys override lower layers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    pub user: Option<Spanned<UserName>>,
    pub port: Option<Spanned<Port>>,
    pub identity_files: Option<Vec<Spanned<LocalPath>>>,
    pub known_hosts: Option<Spanned<LocalPath>>,
    pub global_known_hosts: Option<Vec<Spanned<LocalPath>>>,
    pub connect_timeout: Option<HumanDuration>,
    pub command_timeout: Option<HumanDuration>,
    pub migration_timeout: Option<HumanDuration>,
    pub jump_host: Option<JumpHost>,
    pub use_agent: Option<bool>,
    /// The OpenSSH client config to read (`none`: none); only in the top-level `[ssh]`.
    pub ssh_config: Option<Spanned<LocalPath>>,
}

/// `[ledger]`, `[groups.NAME.ledger]`, `[host.ledger]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedger {
    pub binary: Option<RemotePath>,
    pub releases_dir: Option<RemotePath>,
    pub service: Option<Spanned<RawService>>,
    pub env_file: Option<RemotePath>,
    pub api: Option<ApiAddr>,
    pub ledgers: Option<LedgerList>,
    pub backup_dir: Option<RemotePath>,
    pub storage: Option<StorageName>,
    #[serde(rename = "become")]
    pub escalate: Option<super::Become>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    Systemd,
    Command,
}

/// `service = { manager = "systemd", unit = "..." }` or
/// `service = { manager = "command", start = "...", stop = "...", status = "..." }`. One flat
/// table checked after parsing: an internally tagged enum would lose the spans of its fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub manager: Option<Manager>,
    pub unit: Option<UnitName>,
    pub start: Option<ShellCommand>,
    pub stop: Option<ShellCommand>,
    pub status: Option<ShellCommand>,
}

/// `[rollout]`, `[groups.NAME.rollout]`, `[host.rollout]`: how the run moves through the node's
/// batch (hooks around it, how long it must stay healthy).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub pre_hook: Option<RawHookSetting>,
    pub post_hook: Option<RawHookSetting>,
    pub min_healthy_time: Option<DurationOrZero>,
}

/// `pre_hook = { command = "...", local = false, timeout = "60s" }`, or `pre_hook = "none"` to
/// cancel a lower layer's hook.
#[derive(Debug)]
pub enum RawHookSetting {
    Run(RawHook),
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    pub command: ShellCommand,
    pub local: Option<bool>,
    pub timeout: Option<HumanDuration>,
}

/// A table or the string `"none"`, told apart by a visitor rather than `untagged` (which would
/// lose the table's own error messages and their places).
impl<'de> Deserialize<'de> for RawHookSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HookVisitor;
        impl<'de> Visitor<'de> for HookVisitor {
            type Value = RawHookSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a hook table `{ command = \"...\" }` or \"none\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawHookSetting, E> {
                if v == "none" {
                    Ok(RawHookSetting::None)
                } else {
                    Err(E::custom(format!(
                        "`{v}` is not a hook: write a table such as `{{ command = \"{v}\" }}`, or \"none\"{}{}",
                        super::values::HINT_MARK,
                        "`\"none\"` cancels a hook set at a lower level ([rollout], a group)"
                    )))
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawHookSetting, A::Error> {
                RawHook::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawHookSetting::Run)
            }
        }
        d.deserialize_any(HookVisitor)
    }
}

/// `[groups.NAME]`: overrides for the hosts that list the group.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    #[serde(default)]
    pub ssh: RawSsh,
    #[serde(default)]
    pub ledger: RawLedger,
    #[serde(default)]
    pub rollout: RawRollout,
}

/// One `[[host]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub name: Spanned<HostName>,
    pub address: Spanned<Address>,
    pub port: Option<Spanned<Port>>,
    pub user: Option<Spanned<UserName>>,
    #[serde(default)]
    pub groups: Vec<Spanned<GroupName>>,
    pub migrator: Option<Spanned<bool>>,
    pub replaces: Option<Spanned<HostName>>,
    #[serde(default)]
    pub ssh: RawSsh,
    #[serde(default)]
    pub ledger: RawLedger,
    #[serde(default)]
    pub rollout: RawRollout,
}

impl RawHost {
    pub fn is_migrator(&self) -> bool {
        self.migrator.as_ref().is_some_and(|m| *m.get_ref())
    }
}

/// `[releases."1.9.6"]`: where the binary of one version comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelease {
    pub file: Option<LocalPath>,
    pub url: Option<HttpUrl>,
    pub sha256: Option<Sha256Hex>,
}
