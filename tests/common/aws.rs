//! What the tests of the AWS provisioner (tests/aws_fake.rs against a fake,
//! tests/aws_moto.rs against moto) ask it alike: alice's grants and removals
//! with her SSH key.

// Each test binary that includes this file uses only part of it.
#![allow(dead_code, clippy::unwrap_used)]

use passport::app::ports::{GrantSpec, RevokeSpec};
use passport::domain::request::InstanceInfo;
use passport::domain::time::Timestamp;
use passport::domain::values::{RequestId, Username};

/// alice's SSH public key, installed by every grant of [`grant_spec`].
pub const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkVm1fN7nG8kqzZ1d8dQkPZ5QF1sW7bqkUu1YpJt0dx alice@laptop";

/// When the grants of [`grant_spec`] expire.
pub const EXPIRES_MS: i64 = 1_790_003_600_000;

/// Request `request` granting alice's account on `instances` with [`KEY`],
/// without sudo, until [`EXPIRES_MS`].
pub fn grant_spec(request: u64, instances: Vec<InstanceInfo>) -> GrantSpec {
    let request = RequestId::new(request).unwrap();
    GrantSpec {
        request,
        username: Username::for_request("alice", request),
        instances,
        expires_at: Timestamp::from_millis(EXPIRES_MS),
        sudo: false,
        ssh_public_key: Some(KEY.into()),
        trusted_ca_keys: Vec::new(),
        port_forwarding: false,
    }
}

/// Request `request` removing alice's account from `instances`.
pub fn revoke_spec(request: u64, instances: Vec<InstanceInfo>) -> RevokeSpec {
    let request = RequestId::new(request).unwrap();
    RevokeSpec {
        request,
        username: Username::for_request("alice", request),
        instances,
    }
}
