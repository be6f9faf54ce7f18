//! Keeping secrets out of output and journals: Postgres connection strings lose their password.
