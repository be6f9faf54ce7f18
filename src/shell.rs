//! The one audited function that quotes values for a remote POSIX shell, and validators for
//! values (ledger names) before they reach a command line.
