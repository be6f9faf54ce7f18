//! The practice lab: real OpenSSH `sshd` processes on 127.0.0.1 with the ledger simulator
//! installed as each node's `numary`, and an inventory that every fleetup command uses unchanged.

pub mod keys;
pub mod sshd;
