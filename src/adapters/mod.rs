//! Adapters: the outside world behind the ports.

pub mod aws;
pub mod chat;
pub mod chat_retry;
pub mod checkpoint_file;
pub mod clock;
pub mod console;
pub mod directory;
pub mod discord;
pub mod dm_channels;
pub mod dry_run;
pub mod password_courier;
pub mod postgres;
pub(crate) mod schema;
pub mod seen;
pub mod slack;
pub mod sqlite;
pub mod ssh_ca;
pub mod store_copy;
pub(crate) mod store_metrics;
pub(crate) mod store_rows;
