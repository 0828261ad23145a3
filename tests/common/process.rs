//! Running the `passport` binary from a test: which binary, feeding its
//! standard input, and reading what it printed.

// Each test binary that includes this file uses only part of it.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Output};

/// The `passport` binary cargo built for these tests, or `PASSPORT_TEST_BIN`
/// (a copy, when several checkouts share one target directory).
pub fn bin() -> String {
    std::env::var("PASSPORT_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_passport").to_owned())
}

/// Runs `c` with `input` on its standard input.
pub fn run_input(mut c: Command, input: &str) -> Output {
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
