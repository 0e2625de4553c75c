//! airlock's integration tests: the built binary against real registries and tools.

mod harness;

mod artifact;
mod auth;
mod copy;
mod discover;
mod errors;
mod faults;
mod gate;
mod hostile;
mod layout;
mod mirror;
mod postgres;
mod readme;
mod s3;
mod serve;
mod sync;
mod ui;
