//! A real RabbitMQ node (3.10, `rabbitmq_amqp1_0` plugin) per test, on free
//! loopback ports with its own node name and directories; stopped on drop.
//!
//! Everything the node writes lives in its temporary directory, HOME included
//! (the Erlang cookie that `rabbitmqctl` must share). If no epmd runs, the node
//! starts one, which outlives it (it is shared by every node on the machine).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::mosquitto::free_port;
use super::pki::Pki;

const INSTALL_HINT: &str =
    "rabbitmq-server not found: run scripts/install-test-deps.sh (Debian package rabbitmq-server)";

/// Debian's /usr/sbin wrappers switch to the rabbitmq user and drop the
/// environment; the scripts under /usr/lib/rabbitmq/bin take it as it is.
fn script(name: &str) -> PathBuf {
    let path = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if !path.exists() {
        panic!("{INSTALL_HINT}");
    }
    path
}

/// A running RabbitMQ node with the AMQP 1.0 plugin; user guest/guest.
pub struct RabbitMq {
    pub port: u16,
    /// The TLS listener's port (listening only with [`RabbitMq::start_tls`]).
    pub tls_port: u16,
    pub node: String,
    dist_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RabbitMq {
    /// Starts a node and waits until its applications (and the plugin) run.
    pub fn start() -> RabbitMq {
        RabbitMq::start_with(None)
    }

    /// Starts a node that also has a TLS listener (`tls_port`) presenting
    /// `pki`'s server certificate, asking for a client certificate (verified
    /// against `pki`'s CA if one is sent) and offering SASL EXTERNAL with the
    /// certificate's common name as the user, who is created.
    pub fn start_tls(pki: &Pki) -> RabbitMq {
        let node = RabbitMq::start_with(Some(pki));
        let user = &pki.client_cn;
        for args in [
            vec!["add_user", user, "unused-password"],
            vec!["set_permissions", "-p", "/", user, ".*", ".*", ".*"],
        ] {
            let out = node.ctl(&args);
            assert!(
                out.status.success(),
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        node
    }

    fn start_with(pki: Option<&Pki>) -> RabbitMq {
        let dir = tempfile::tempdir().unwrap();
        // A node port above 45 535 would put the default distribution port
        // (node port + 20 000) out of range: draw until both are fine.
        let below = || loop {
            let port = free_port();
            if port < 45_000 {
                break port;
            }
        };
        let port = below();
        let tls_port = loop {
            let p = below();
            if p != port {
                break p;
            }
        };
        let node = format!("amqpbridge-{port}@localhost");
        for sub in ["mnesia", "log", "home"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let mut plugins = "rabbitmq_amqp1_0".to_string();
        let mut conf = format!(
            "listeners.tcp.default = 127.0.0.1:{port}\n\
             amqp1_0.default_user = guest\n\
             amqp1_0.default_vhost = /\n"
        );
        if let Some(pki) = pki {
            plugins.push_str(", rabbitmq_auth_mechanism_ssl");
            conf.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = false\n\
                 auth_mechanisms.1 = PLAIN\n\
                 auth_mechanisms.2 = AMQPLAIN\n\
                 auth_mechanisms.3 = EXTERNAL\n\
                 ssl_cert_login_from = common_name\n",
                ca = pki.ca.display(),
                cert = pki.server_cert.display(),
                key = pki.server_key.display(),
            ));
        }
        std::fs::write(
            dir.path().join("enabled_plugins"),
            format!("[{plugins}].\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join("rabbitmq.conf"), conf).unwrap();
        let dist_port = loop {
            let p = free_port();
            if p != port && p != tls_port {
                break p;
            }
        };
        let mut broker = RabbitMq {
            port,
            tls_port,
            node,
            dist_port,
            dir,
            child: None,
        };
        broker.launch();
        broker
    }

    fn env(&self, command: &mut Command) {
        let d = self.dir.path();
        command
            .env("HOME", d.join("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", self.pid_file());
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("node.pid")
    }

    fn launch(&mut self) {
        let _ = std::fs::remove_file(self.pid_file());
        let log = std::fs::File::create(self.dir.path().join("server.out")).unwrap();
        let mut command = Command::new(script("rabbitmq-server"));
        self.env(&mut command);
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
        self.child = Some(child);
        let pid_file = self.pid_file();
        let out = self.ctl(&["wait", pid_file.to_str().unwrap(), "--timeout", "120"]);
        if !out.status.success() {
            let server =
                std::fs::read_to_string(self.dir.path().join("server.out")).unwrap_or_default();
            panic!(
                "RabbitMQ node {} did not start: {}\n{server}",
                self.node,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Runs `rabbitmqctl -n NODE ARGS…` against this node.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut command = Command::new(script("rabbitmqctl"));
        self.env(&mut command);
        command
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"))
    }

    /// (messages ready, messages unacknowledged) of a queue; (0, 0) when the
    /// queue does not exist.
    pub fn queue_depth(&self, queue: &str) -> (u64, u64) {
        let out = self.ctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ]);
        assert!(
            out.status.success(),
            "list_queues failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() == 3 && fields[0] == queue {
                return (fields[1].parse().unwrap(), fields[2].parse().unwrap());
            }
        }
        (0, 0)
    }

    /// Starts the stopped node again on the same port and directories (its
    /// durable queues and persistent messages survive).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the node is still running");
        self.launch();
    }

    /// Gives every queue whose name matches `pattern` a policy, e.g.
    /// `{"dead-letter-exchange":""}`; panics if rabbitmqctl refuses it.
    pub fn set_policy(&self, name: &str, pattern: &str, definition: &str) {
        let out = self.ctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            name,
            pattern,
            definition,
        ]);
        assert!(
            out.status.success(),
            "set_policy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Declares a durable queue (what a production queue is; RabbitMQ's
    /// AMQP 1.0 plugin declares missing queues non-durable).
    pub fn declare_durable_queue(&self, name: &str) {
        let expr = format!(
            "rabbit_amqqueue:declare(rabbit_misc:r(<<\"/\">>, queue, <<\"{name}\">>), true, false, [], none, <<\"test\">>)."
        );
        let out = self.ctl(&["eval", &expr]);
        assert!(
            out.status.success(),
            "declaring queue {name} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the node's VM with SIGKILL (a crash: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
                let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the node (`rabbitmqctl stop`), killing it if that does not work.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = self.ctl(&["stop"]);
            for _ in 0..100 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // The script may not have exec'd the VM: kill the VM by its pid file.
            if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
                let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop();
    }
}
