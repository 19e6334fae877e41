//! A real Mosquitto broker per test, on a free loopback port, stopped on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const INSTALL_HINT: &str = "mosquitto not found: run scripts/install-test-deps.sh";

fn binary() -> PathBuf {
    for candidate in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        let path = PathBuf::from(candidate);
        if path.exists() {
            return path;
        }
    }
    panic!("{INSTALL_HINT}");
}

/// A free port on 127.0.0.1 (bound and released; the broker takes it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running Mosquitto; restartable on the same port with the same store.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: String,
    /// Log lines saying a client was refused ("not authorised").
    pub refusals: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Topics of every PUBLISH the broker logged as received (needs `log_type debug`).
    pub received: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Log lines saying a client connected (every connect and reconnect).
    pub connects: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Mosquitto {
    /// Starts a plain, anonymous broker that persists sessions across restarts.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(|_| String::new())
    }

    /// Starts a broker with extra config lines; the closure gets the broker's
    /// own directory to put files (passwords, certificates) in.
    pub fn start_with(extra: impl FnOnce(&std::path::Path) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        // Run as root, mosquitto drops to its own user: let it write its store.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let extra = extra(dir.path());
        let mut broker = Mosquitto {
            port: free_port(),
            dir,
            child: None,
            extra,
            refusals: Default::default(),
            received: Default::default(),
            connects: Default::default(),
        };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{anonymous}persistence true\n\
                 persistence_location {dir}/\nmax_queued_messages 1000000\nmax_inflight_messages 0\n\
                 log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n{extra}\n",
                port = self.port,
                dir = self.dir.path().display(),
                extra = self.extra,
                anonymous = if self.extra.contains("allow_anonymous") { "" } else { "allow_anonymous true\n" },
            ),
        )
        .unwrap();
        let mut child = Command::new(binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
        // Ready once it reports its listener; keep draining its log afterwards.
        let stderr = child.stderr.take().unwrap();
        let refusals = self.refusals.clone();
        let received = self.received.clone();
        let connects = self.connects.clone();
        let rx = super::follow_output(
            stderr,
            |line| line.contains("running") || line.contains("Error"),
            move |line| {
                // "Received PUBLISH from CLIENT (d0, q1, r0, m7, 'TOPIC', ... (N bytes))"
                if line.contains("Received PUBLISH from") {
                    if let Some(topic) = line.split('\'').nth(1) {
                        received.lock().unwrap().insert(topic.to_string());
                    }
                }
                if std::env::var_os("MOSQUITTO_LOG").is_some() {
                    eprintln!("mosquitto: {line}");
                }
                if line.contains("New client connected") {
                    connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if line.contains("not authorised") {
                    refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            },
        );
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("mosquitto did not report it is running");
        assert!(line.contains("running"), "mosquitto failed: {line}");
        self.child = Some(child);
    }

    /// Every topic the broker logged as received (see `received`), once the
    /// log reader caught up: a sentinel is published after everything else
    /// and waited for in the log. The log is read from a pipe on its own
    /// thread and can trail the PUBACKs (and so the accepts) by tens of
    /// milliseconds on a busy machine; Mosquitto logs in order, so once the
    /// reader has the sentinel's line it has every line before it.
    /// `sentinel` is the topic it goes to (a subscriber may wait for it too);
    /// it is left out of the set returned.
    pub async fn received_when_caught_up(
        &self,
        sentinel: &str,
    ) -> std::collections::HashSet<String> {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(
            rumqttc::MqttOptions::new("log-sentinel", "127.0.0.1", self.port),
            10,
        );
        client
            .publish(sentinel, rumqttc::QoS::AtLeastOnce, false, "end")
            .await
            .unwrap();
        super::within(30, "sentinel PUBACK", async {
            loop {
                if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) =
                    eventloop.poll().await
                {
                    break;
                }
            }
        })
        .await;
        super::eventually("the broker log reader to reach the sentinel", 30, || {
            self.received.lock().unwrap().contains(sentinel)
        })
        .await;
        let mut received = self.received.lock().unwrap().clone();
        received.remove(sentinel);
        received
    }

    /// True once the broker wrote its persistence file.
    pub fn store_saved(&self) -> bool {
        self.dir.path().join("mosquitto.db").exists()
    }

    /// Stops the broker (SIGTERM, so it saves its sessions) and waits for it.
    /// Mosquitto loses a SIGTERM that arrives just after it reported
    /// "running" (it sets its run flag afterwards), so the signal is repeated
    /// until the process is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            for _ in 0..100 {
                super::signal(child.id(), "TERM");
                for _ in 0..10 {
                    if child.try_wait().ok().flatten().is_some() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker (SIGKILL): no goodbye, no save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the broker process.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            super::signal(child.id(), signal);
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Starts it again after `stop` or `kill`.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        self.launch();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Mosquitto password file in `dir` with one user, readable by the broker.
pub fn password_file(dir: &std::path::Path, user: &str, password: &str) -> PathBuf {
    let passwords = dir.join("passwords");
    let status = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args([user, password])
        .status()
        .expect("mosquitto_passwd (scripts/install-test-deps.sh installs it)");
    assert!(status.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passwords, std::fs::Permissions::from_mode(0o644)).unwrap();
    passwords
}
