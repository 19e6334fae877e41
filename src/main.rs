//! The `amqp-bridge` command line: run, check, sign, emulate, demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[cfg(feature = "emulator")]
use anyhow::Context;
use clap::{Parser, Subcommand};

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
#[cfg(feature = "emulator")]
use amqp_bridge::emulator::{Emulator, EmulatorConfig};
use amqp_bridge::source::aliyun::{sign_now, Credentials};
use amqp_bridge::telemetry::{init_logging, LogFormat};

#[derive(Parser)]
#[command(
    name = "amqp-bridge",
    version = amqp_bridge::VERSION_LINE,
    about = "Forward an AMQP 1.0 source (Alibaba Cloud IoT Platform) to MQTT, Kafka and RocketMQ, acknowledging only after the egress confirmed"
)]
struct Cli {
    /// Log format: human (default) or json for containers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log level or filter (e.g. debug, amqp_bridge=trace); RUST_LOG wins when set.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge with a configuration file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and print it with secrets as ***.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the signed IoT Platform login the source would use now.
    Sign {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the password instead of ***.
        #[arg(long)]
        show_password: bool,
    },
    #[cfg(feature = "emulator")]
    /// Run the IoT Platform emulator (an AMQP 1.0 server over TLS).
    Emulate(EmulateArgs),
    #[cfg(feature = "demo")]
    /// Run the embedded demo: emulator → bridge → in-process MQTT broker.
    Demo(DemoArgs),
    /// Exit 0 when the bridge's /readyz (or /healthz with --live) answers 200;
    /// for container HEALTHCHECKs, which have no curl.
    Healthcheck {
        /// The endpoint to ask; default http://127.0.0.1:9464/readyz.
        #[arg(long)]
        url: Option<url::Url>,
        /// Ask /healthz (alive) instead of /readyz (ready).
        #[arg(long)]
        live: bool,
    },
}

#[cfg(feature = "demo")]
#[derive(clap::Args)]
struct DemoArgs {
    /// Where the embedded MQTT broker listens (watch with `mosquitto_sub -t '#' -v`).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_listen: std::net::SocketAddr,
    /// Where the embedded IoT Platform emulator listens.
    #[arg(long, default_value = "127.0.0.1:5671")]
    amqp_listen: std::net::SocketAddr,
    /// Messages per second the emulator pushes; 0 = as fast as the bridge takes them.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Where the bridge serves /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9464")]
    telemetry_listen: std::net::SocketAddr,
    /// Print the built-in bridge configuration and exit.
    #[arg(long)]
    print_config: bool,
}

#[cfg(feature = "emulator")]
#[derive(clap::Args)]
struct EmulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5671")]
    listen: std::net::SocketAddr,
    /// Accepted AccessKeyId:AccessKeySecret (repeatable).
    #[arg(long = "access-key", value_name = "ID:SECRET")]
    access_keys: Vec<String>,
    /// Accepted consumer group id (repeatable).
    #[arg(long = "consumer-group", value_name = "ID")]
    consumer_groups: Vec<String>,
    /// Messages per second per consumer group; 0 = as fast as credit allows.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Messages per consumer group; 0 = without end.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Replay this JSON-lines file instead of generating messages.
    #[arg(long)]
    messages: Option<PathBuf>,
    /// Redeliver a message this long after it was released, rejected, modified or lost.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    redeliver_after: Duration,
    /// Push an unsettled message again after this long, while the first copy
    /// is still outstanding (the platform's ack timeout is 30s); off when unset.
    #[arg(long, value_parser = humantime::parse_duration)]
    ack_timeout: Option<Duration>,
    /// Push every message a second time right after the first (an
    /// ack-timeout redelivery on demand, to see dedup at work); dropped if
    /// the first was accepted before the copy went out.
    #[arg(long)]
    push_twice: bool,
    /// Close a connection that has not attached a receiver link by then.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    receiver_deadline: Duration,
    /// Refuse a login whose timestamp is further than this from the clock.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    max_skew: Duration,
    /// PEM certificate chain (default: one made at start for localhost and 127.0.0.1).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Another host name for the generated certificate (repeatable), e.g.
    /// the emulator's service name in a compose stack.
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_names: Vec<String>,
    /// Write the PEM of the CA that verifies the generated certificate here.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Exit once --count messages were all accepted.
    #[arg(long, requires = "count")]
    exit_when_done: bool,
}

#[cfg(feature = "emulator")]
impl EmulateArgs {
    fn to_config(&self) -> anyhow::Result<EmulatorConfig> {
        let defaults = EmulatorConfig::default();
        let access_keys = if self.access_keys.is_empty() {
            defaults.access_keys
        } else {
            self.access_keys
                .iter()
                .map(|pair| {
                    pair.split_once(':')
                        .map(|(id, secret)| (id.to_string(), secret.to_string()))
                        .with_context(|| "--access-key takes ID:SECRET".to_string())
                })
                .collect::<anyhow::Result<_>>()?
        };
        Ok(EmulatorConfig {
            listen: self.listen,
            access_keys,
            consumer_groups: if self.consumer_groups.is_empty() {
                defaults.consumer_groups
            } else {
                self.consumer_groups.clone()
            },
            rate: self.rate,
            count: self.count,
            messages: self.messages.clone(),
            redeliver_after: self.redeliver_after,
            ack_timeout: self.ack_timeout,
            push_twice: self.push_twice,
            receiver_deadline: self.receiver_deadline,
            max_skew: self.max_skew,
            cert: self.cert.clone().zip(self.key.clone()),
            tls_names: self.tls_names.clone(),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log_level.as_deref());
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { config } => check(&config),
        Command::Sign {
            config,
            show_password,
        } => sign(&config, show_password),
        Command::Run { config: path } => {
            let (config, hash) = load_config(&path)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(run_bridge(config, &path, hash))
        }
        #[cfg(feature = "emulator")]
        Command::Emulate(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(emulate(args))
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(demo(args))
        }
        Command::Healthcheck { url, live } => {
            let url = match url {
                Some(url) => url,
                None => {
                    let path = if live { "/healthz" } else { "/readyz" };
                    url::Url::parse(&format!("http://127.0.0.1:9464{path}"))?
                }
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(runtime.block_on(healthcheck(&url)))
        }
    }
}

/// Asks one endpoint; prints its answer and exits 0 on 200, 1 otherwise.
async fn healthcheck(url: &url::Url) -> ExitCode {
    // Printed in errors: never with a password in it.
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    match tokio::time::timeout(
        Duration::from_secs(5),
        amqp_bridge::telemetry::http::get(url),
    )
    .await
    {
        Ok(Ok((200, body))) => {
            println!("{}", body.trim_end());
            ExitCode::SUCCESS
        }
        Ok(Ok((status, body))) => {
            println!("{status}: {}", body.trim_end());
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("error: {shown}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("error: {shown}: no answer within 5s");
            ExitCode::FAILURE
        }
    }
}

/// Reads and checks a configuration file; also returns a short hash of its
/// text, which the logs show at start and on every reload.
fn load_config(path: &Path) -> Result<(Config, String), amqp_bridge::config::ConfigError> {
    use sha2::Digest;
    let text =
        std::fs::read_to_string(path).map_err(|source| amqp_bridge::config::ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let config = Config::parse(&text, path, |name| std::env::var(name).ok())?;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hash = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    Ok((config, hash))
}

async fn run_bridge(config: Config, path: &Path, hash: String) -> anyhow::Result<ExitCode> {
    tracing::info!(
        routes = config.routes.len(),
        sinks = config.sinks.0.len(),
        connections = config.source.connections,
        config = %path.display(),
        config_hash = %hash,
        "starting amqp-bridge"
    );
    let mut signals = Signals::install();
    let bridge = Bridge::start(&config).await?;
    while let Signal::Reload = signals.next().await {
        reload(&bridge, path);
    }
    tracing::info!(
        "shutting down: /readyz is 503, no new messages; waiting for in-flight confirmations"
    );
    bridge.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: re-reads the file; an invalid file or a change that needs a
/// restart is logged (file:line:column for the former) and the running
/// configuration stays.
fn reload(bridge: &Bridge, path: &Path) {
    let (config, hash) = match load_config(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            bridge.metrics().config_reloaded(false);
            tracing::error!(%error, "configuration reload refused; the running configuration stays");
            return;
        }
    };
    match bridge.reload(&config) {
        Ok(()) => tracing::info!(
            config = %path.display(),
            config_hash = %hash,
            routes = config.routes.len(),
            "configuration reloaded: new messages take the new routes"
        ),
        Err(error) => tracing::error!(
            %error,
            config_hash = %hash,
            "configuration reload refused; the running configuration stays"
        ),
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    match Config::load(path) {
        Ok(config) => {
            print!("{}", config.to_redacted_yaml());
            for warning in config.delivery_warnings() {
                eprintln!("warning: {}: {warning}", path.display());
            }
            eprintln!("{}: configuration is valid", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn sign(path: &Path, show_password: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let source = &config.source;
    if source.kind != amqp_bridge::config::SourceKind::Aliyun {
        anyhow::bail!(
            "`sign` prints the IoT Platform's signed login: the source is not of kind aliyun"
        );
    }
    let login = sign_now(&Credentials::from_config(source, &source.client_id));
    if show_password {
        println!("username: {}", login.username);
        println!("password: {}", login.password.expose());
    } else {
        println!("username: {}", login.username_redacted());
        println!("password: {}", login.password);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "emulator")]
async fn emulate(args: EmulateArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install();
    let config = args.to_config()?;
    let emulator = Emulator::start(config.clone()).await?;
    if let (Some(path), Some(pem)) = (&args.ca_out, emulator.ca_pem()) {
        // Written aside and renamed: whoever waits for the file never reads half of it.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, pem).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("CA certificate written to {}", path.display());
    }
    eprintln!(
        "IoT Platform emulator on amqps://{} — access keys: {}; consumer groups: {}",
        emulator.local_addr(),
        config
            .access_keys
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        config.consumer_groups.join(", ")
    );
    let stats = emulator.stats().clone();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last_pushed = 0;
    let finished = {
        let done = async {
            if args.exit_when_done {
                emulator.all_accepted().await
            } else {
                std::future::pending().await
            }
        };
        tokio::pin!(done);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let s = stats.snapshot();
                    eprintln!(
                        "pushed={} ({}/s) accepted={} released={} rejected={} modified={} redelivered={} outstanding={}",
                        s.pushed, s.pushed - last_pushed, s.accepted, s.released, s.rejected, s.modified, s.redelivered, s.outstanding
                    );
                    last_pushed = s.pushed;
                }
                _ = &mut done => break true,
                _ = signals.shutdown() => break false,
            }
        }
    };
    if finished {
        eprintln!("all messages accepted");
    }
    let snapshot = emulator.shutdown().await;
    // Field order as documented: pushed first, outstanding last.
    println!(
        "{{\"pushed\":{},\"accepted\":{},\"released\":{},\"rejected\":{},\"modified\":{},\"redelivered\":{},\"outstanding\":{}}}",
        snapshot.pushed,
        snapshot.accepted,
        snapshot.released,
        snapshot.rejected,
        snapshot.modified,
        snapshot.redelivered,
        snapshot.outstanding
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "demo")]
async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install();
    let ca_file =
        std::env::temp_dir().join(format!("amqp-bridge-demo-ca-{}.pem", std::process::id()));
    if args.print_config {
        print!(
            "{}",
            amqp_bridge::demo::config_text(args.amqp_listen, args.mqtt_listen, &ca_file)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let emulator = Emulator::start(EmulatorConfig {
        listen: args.amqp_listen,
        access_keys: vec![("demo-ak".into(), "demo-secret".into())],
        rate: args.rate,
        ..EmulatorConfig::default()
    })
    .await?;
    std::fs::write(&ca_file, emulator.ca_pem().unwrap_or_default())
        .with_context(|| format!("writing {}", ca_file.display()))?;
    amqp_bridge::demo::start_mqtt_broker(args.mqtt_listen)?;
    let mut config = amqp_bridge::demo::config(emulator.local_addr(), args.mqtt_listen, &ca_file)?;
    config.telemetry.listen = args.telemetry_listen;
    let bridge = Bridge::start(&config).await?;
    eprintln!(
        "demo: IoT Platform emulator on amqps://{} → amqp-bridge → MQTT broker on mqtt://{}\n\
         demo: watch with `mosquitto_sub -h {} -p {} -t 'devices/#' -v`; Ctrl-C stops\n\
         demo: metrics on http://{}/metrics; the bridge configuration: amqp-bridge demo --print-config",
        emulator.local_addr(),
        args.mqtt_listen,
        args.mqtt_listen.ip(),
        args.mqtt_listen.port(),
        bridge
            .telemetry_addr()
            .map_or_else(|| args.telemetry_listen.to_string(), |a| a.to_string()),
    );
    let metrics = bridge.metrics().clone();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last_accepted = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let accepted = metrics.accepted();
                println!(
                    "pushed={} forwarded={} accepted={} in_flight={} msg/s={}",
                    emulator.stats().snapshot().pushed,
                    metrics.forwarded(),
                    accepted,
                    metrics.in_flight(),
                    accepted - last_accepted
                );
                last_accepted = accepted;
            }
            _ = signals.shutdown() => break,
        }
    }
    eprintln!("demo: stopping");
    bridge.shutdown().await;
    let snapshot = emulator.shutdown().await;
    let _ = std::fs::remove_file(&ca_file);
    eprintln!(
        "demo: emulator pushed={} accepted={} outstanding={}",
        snapshot.pushed, snapshot.accepted, snapshot.outstanding
    );
    Ok(ExitCode::SUCCESS)
}

/// What a signal asks for.
enum Signal {
    Shutdown,
    Reload,
}

/// SIGINT/SIGTERM end the process (after a drain); SIGHUP reloads the
/// configuration under `run` and is logged and ignored elsewhere: it must
/// never end the process without a drain (its default action). Installed
/// before anything starts, so no signal finds the default action in place.
struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                terminate: signal(SignalKind::terminate()).ok(),
                hangup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next SIGINT/SIGTERM (shutdown) or SIGHUP (reload).
    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            async fn next(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
                match signal {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Signal::Shutdown,
                Some(()) = next(&mut self.terminate) => Signal::Shutdown,
                Some(()) = next(&mut self.hangup) => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Shutdown
        }
    }

    /// Resolves on SIGINT or SIGTERM; SIGHUP is logged and ignored (the
    /// emulator and the demo have no configuration file to reload).
    #[cfg(feature = "emulator")]
    async fn shutdown(&mut self) {
        while let Signal::Reload = self.next().await {
            tracing::warn!("SIGHUP ignored: nothing to reload here");
        }
    }
}
