//! `mmctl`: a command-line client of the pool-manager's admin API (models, aliases,
//! replicas, events), with table or JSON output and exit codes that scripts can rely on.
//!
//! The binary (`main.rs`) only parses flags, runs [`commands::run`] and turns its error
//! into [`Error::exit_code`].

pub mod aliases;
pub mod cli;
pub mod client;
pub mod commands;
pub mod format;
pub mod manifests;
pub mod specs;
pub mod table;

pub use client::{Client, Error};
