//! The checkpoint file: an append-only text file that gets one line per
//! Logbook checkpoint (`TIME SEQ HASH`), synced to disk before the checkpoint
//! counts as kept. It is meant to be shipped off the machine (see README).

use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::app::ports::{CheckpointError, CheckpointSink};
use crate::domain::logbook::Checkpoint;

pub struct CheckpointFile {
    path: PathBuf,
}

impl CheckpointFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

/// Appends `line` and a line ending to the file at `path` (created when
/// missing) and syncs it. The file is opened for appending only, so no write
/// can overwrite a line already there.
fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write of the whole line: appends of one write never interleave.
    file.write_all(format!("{line}\n").as_bytes())?;
    file.sync_data()
}

#[async_trait]
impl CheckpointSink for CheckpointFile {
    async fn keep(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let (path, line) = (self.path.clone(), checkpoint.line());
        tokio::task::spawn_blocking(move || append_line(&path, &line))
            .await
            .map_err(|e| CheckpointError(format!("the write stopped: {e}")))?
            .map_err(|e| CheckpointError(format!("cannot append to {}: {e}", self.path.display())))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
