//! Shared test support: the fake API server and story helpers.
pub mod fake_apiserver;
