//! The file sink under a full disk and under constant rotation: every line
//! complete, every accepted message in exactly one file.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use common::*;

/// Every line of `base` and its rotated siblings (`base.*`): message id →
/// how many lines carry it. Fails on a line that is not complete JSON.
fn ids_in_files(base: &Path) -> (HashMap<String, u32>, usize) {
    let dir = base.parent().unwrap();
    let name = base.file_name().unwrap().to_string_lossy().to_string();
    let mut ids = HashMap::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        if file != name && !file.starts_with(&format!("{name}.")) {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{file} ends mid-line"
        );
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("torn line in {file}: {e}: {line:?}"));
            let id = value["messageId"].as_str().unwrap().to_string();
            *ids.entry(id).or_insert(0) += 1;
        }
    }
    (ids, files)
}

fn file_config(
    emulator: &amqp_bridge::emulator::Emulator,
    dir: &Path,
    out: &Path,
    extra: &str,
) -> Config {
    let source = source_yaml(emulator, dir, "bridge-file", "");
    let text = format!(
        r##"{source}sinks:
  out: {{ kind: file, path: {out}{extra} }}
routes:
  - {{ match: {{ topic: "#" }}, to: [ {{ sink: out }} ] }}
retry: {{ initial: 20ms, max: 200ms }}
"##,
        out = out.display(),
    );
    Config::parse(&text, Path::new("file.yaml"), |_| None).expect("test config parses")
}

/// A small tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("runs mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (the test needs root)"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 4096];
    loop {
        match file.write(&block) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let one = [0u8; 1];
    while file.write(&one).is_ok_and(|n| n == 1) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_leaves_no_torn_line_and_loses_nothing() {
    const N: u64 = 3_000;
    // Room for the whole run (about 1.6 MB) once the filler is gone.
    let disk = Tmpfs::mount("4m");
    let dir = tempfile::tempdir().unwrap();
    let emulator = emulator(|c| {
        c.count = N;
        c.rate = 1_000;
    })
    .await;
    let out = disk.path().join("out.jsonl");
    let config = file_config(&emulator, dir.path(), &out, "");
    let bridge = Bridge::start(&config).await.unwrap();
    eventually("some messages written", 30, || {
        bridge.metrics().accepted() >= 300
    })
    .await;

    // Disk full: writes fail (some part-way), and are retried.
    let filler = disk.path().join("filler");
    fill(&filler);
    let retries = bridge.metrics().retries();
    eventually("writes failing on the full disk", 30, || {
        bridge.metrics().retries() > retries + 20
    })
    .await;
    let accepted_while_full = bridge.metrics().accepted();
    std::fs::remove_file(&filler).unwrap();
    within(60, "all accepted", emulator.all_accepted()).await;
    let failed_attempts = bridge.metrics().retries() - retries;
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    assert!(
        accepted_while_full < N,
        "the disk filled too late to matter"
    );

    let (ids, _) = ids_in_files(&out);
    assert_eq!(ids.len() as u64, N, "every accepted message is in the file");
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    eprintln!("full disk: {failed_attempts} failed write attempts, no torn line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_after_every_batch_never_overwrites_a_file() {
    const N: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    // On tmpfs an fsync takes microseconds: several rotations a millisecond.
    let disk = Tmpfs::mount("16m");
    let emulator = emulator(|c| c.count = N).await;
    let out = disk.path().join("files").join("out.jsonl");
    let config = file_config(&emulator, dir.path(), &out, ", rotate_bytes: 1");
    let bridge = Bridge::start(&config).await.unwrap();
    within(60, "all accepted", emulator.all_accepted()).await;
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    let (ids, files) = ids_in_files(&out);
    assert_eq!(ids.len() as u64, N, "lines lost to an overwritten rotation");
    assert!(ids.values().all(|n| *n == 1));
    assert!(files > 1, "rotated into {files} files");
    eprintln!("rotation: {N} lines in {files} files");
}
