//! The bridge as a real child process (`amqp-bridge run`), for tests that
//! kill it: its log is kept for inspection, its readiness read over HTTP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One `amqp-bridge run --config FILE` process.
pub struct BridgeProcess {
    child: Option<Child>,
    config: PathBuf,
    /// `RUST_LOG` of the process.
    log_level: String,
    /// Where its `/metrics`, `/healthz` and `/readyz` are served.
    pub telemetry: std::net::SocketAddr,
    /// Every line it wrote to stderr, across restarts.
    pub log: Arc<Mutex<String>>,
}

impl BridgeProcess {
    /// Starts the bridge on `config`, whose `telemetry.listen` is `telemetry`.
    pub fn start(config: &Path, telemetry: std::net::SocketAddr) -> BridgeProcess {
        BridgeProcess::start_logging(config, telemetry, "debug")
    }

    /// As [`BridgeProcess::start`], logging at `level` (`RUST_LOG`).
    pub fn start_logging(
        config: &Path,
        telemetry: std::net::SocketAddr,
        level: &str,
    ) -> BridgeProcess {
        let mut process = BridgeProcess {
            child: None,
            config: config.to_path_buf(),
            log_level: level.to_string(),
            telemetry,
            log: Arc::new(Mutex::new(String::new())),
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_amqp-bridge"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", &self.log_level)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the amqp-bridge binary starts");
        let log = self.log.clone();
        let _ = super::follow_output(
            child.stderr.take().expect("piped stderr"),
            |_| false,
            move |line| {
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(line);
                log.push('\n');
            },
        );
        self.child = Some(child);
    }

    /// Waits until `/readyz` answers 200: sinks connected, source attached.
    pub async fn ready(&self, secs: u64) {
        let url = url::Url::parse(&format!("http://{}/readyz", self.telemetry)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok((200, _)) = amqp_bridge::telemetry::http::get(&url).await {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "bridge at {} not ready after {secs}s; log tail:\n{}",
                self.telemetry,
                self.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its `/metrics` text now.
    pub async fn scrape(&self) -> String {
        let url = url::Url::parse(&format!("http://{}/metrics", self.telemetry)).unwrap();
        match amqp_bridge::telemetry::http::get(&url).await {
            Ok((200, body)) => body,
            other => panic!("scrape of {} failed: {other:?}", self.telemetry),
        }
    }

    /// SIGKILL: no drain, no goodbye; waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running process's id, to signal it.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Starts the same configuration again after [`BridgeProcess::kill`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// SIGTERM (drain), SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(child) = self.child.take() {
            super::stop_within(child, grace);
        }
    }

    /// Every line of its log so far that contains `text`.
    pub fn log_lines(&self, text: &str) -> Vec<String> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.lines()
            .filter(|l| l.contains(text))
            .map(str::to_string)
            .collect()
    }

    /// Waits until it logged `count` lines containing `text` (failing the
    /// test with its log tail after `secs`); returns them.
    pub async fn logged(&self, text: &str, count: usize, secs: u64) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let lines = self.log_lines(text);
            if lines.len() >= count {
                return lines;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {count} log lines with `{text}` after {secs}s; log tail:\n{}",
                lines.len(),
                self.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its `/readyz` answer now: (status, body).
    pub async fn readyz(&self) -> (u16, String) {
        let url = url::Url::parse(&format!("http://{}/readyz", self.telemetry)).unwrap();
        amqp_bridge::telemetry::http::get(&url)
            .await
            .unwrap_or_else(|e| panic!("/readyz of {} failed: {e:?}", self.telemetry))
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
