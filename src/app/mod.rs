//! Use cases: what Passport does, written against the ports only.

pub mod dispatch;
pub mod effects;
pub mod engine;
pub mod jobs;
pub mod lifecycle;
pub mod messages;
pub mod peers;
pub mod ports;
pub mod retry;
pub mod signin;
