//! Passport: just-in-time access to EC2 instances, requested and approved in chat.
//!
//! Layers, with dependencies pointing one way only:
//! [`domain`] ← [`app`] ← [`adapters`] ← [`startup`]/[`cli`] ← `main`.
//! See ARCHITECTURE.md.

#![forbid(unsafe_code)]

pub mod adapters;
pub mod api;
pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod doctor;
pub mod domain;
pub mod http;
pub mod scheduler;
pub mod startup;
