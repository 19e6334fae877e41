//! JSON lines appended to a file. A writer task takes every line queued so far,
//! writes them, fsyncs once and only then confirms them all (group commit), so
//! "confirmed" means "on disk" without one fsync per message.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

pub mod config;

use super::{record::json_line, Outgoing, Sink, SinkError};
pub use config::FileSinkConfig;

type Pending = (String, oneshot::Sender<Result<(), SinkError>>);

/// An append-only JSON-lines file with optional size rotation.
pub struct FileSink {
    name: String,
    queue: mpsc::UnboundedSender<Pending>,
}

impl FileSink {
    /// Opens (creating) the file; fails at start when it cannot be written.
    pub fn start(name: &str, config: &FileSinkConfig) -> std::io::Result<FileSink> {
        let file = open(&config.path)?;
        let (queue, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            path: config.path.clone(),
            size: file.metadata()?.len(),
            file,
            rotate_bytes: config.rotate_bytes,
            torn: false,
        };
        std::thread::Builder::new()
            .name(format!("file-sink-{name}"))
            .spawn(move || writer.run(rx))?;
        Ok(FileSink {
            name: name.to_string(),
            queue,
        })
    }
}

/// Opens for appending, creating the file (and its directory); a new file's
/// directory entry is fsynced so a crash cannot lose the file itself.
fn open(path: &Path) -> std::io::Result<File> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let existed = path.exists();
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    if !existed {
        sync_dir(dir.unwrap_or(Path::new(".")))?;
    }
    Ok(file)
}

/// Makes creations and renames in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    rotate_bytes: Option<u64>,
    /// A failed batch could not be cut off yet.
    torn: bool,
}

impl Writer {
    /// Runs on its own thread: blocking writes and fsync stay off the runtime.
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let result = self
                .write(&batch)
                .map_err(|e| SinkError::Transient(format!("{}: {e}", self.path.display())));
            for (_, done) in batch {
                let _ = done.send(result.clone());
            }
        }
    }

    fn write(&mut self, batch: &[Pending]) -> std::io::Result<()> {
        if self.torn {
            self.file.set_len(self.size)?;
            self.torn = false;
        }
        if let Some(limit) = self.rotate_bytes {
            if self.size > 0 && self.size >= limit {
                self.rotate()?;
            }
        }
        let mut buf = Vec::with_capacity(batch.iter().map(|(l, _)| l.len()).sum());
        for (line, _) in batch {
            buf.extend_from_slice(line.as_bytes());
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // A short write (disk full, I/O error) leaves part of the batch
            // behind: cut the file back to its last complete line, so the
            // retry does not glue its first line onto a fragment.
            if let Err(cut) = self.file.set_len(self.size) {
                // Tried again before the next write: nothing is appended
                // after a fragment.
                self.torn = true;
                tracing::error!(path = %self.path.display(), error = %cut, "cannot truncate a partly written batch");
            }
            return Err(e);
        }
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Renames the file to `PATH.<millis>` (`PATH.<millis>-N` when that
    /// exists: two rotations in one millisecond must not overwrite the
    /// first) and starts a new one.
    fn rotate(&mut self) -> std::io::Result<()> {
        let stamp = crate::source::aliyun::now_ms();
        let mut n = 0u32;
        let rotated = loop {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{stamp}"));
            if n > 0 {
                name.push(format!("-{n}"));
            }
            let name = PathBuf::from(name);
            if !name.exists() {
                break name;
            }
            n += 1;
        };
        // A rotation that renamed the file but could not open the new one
        // left no file behind: just open it now.
        if self.path.exists() {
            std::fs::rename(&self.path, &rotated)?;
        }
        self.file = open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, message: Outgoing) -> BoxFuture<'static, Result<(), SinkError>> {
        let line = json_line(&message);
        let queue = self.queue.clone();
        Box::pin(async move {
            let (done, confirmed) = oneshot::channel();
            queue
                .send((line, done))
                .map_err(|_| SinkError::Transient("file writer stopped".into()))?;
            confirmed
                .await
                .unwrap_or_else(|_| Err(SinkError::Transient("file writer stopped".into())))
        })
    }

    fn kind(&self) -> crate::sink::SinkKind {
        crate::sink::SinkKind::File
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
