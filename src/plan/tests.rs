//! Plan builder tests.
