//! The domain: access requests, their state machine, the command grammar, the
//! approval policy and the Logbook's hash chain. Plain Rust with no IO: nothing
//! here can fail for reasons outside its inputs.

pub mod certificate;
pub mod command;
pub mod logbook;
pub mod notice;
pub mod policy;
pub mod request;
pub mod session;
pub mod signin;
pub mod time;
pub mod values;
