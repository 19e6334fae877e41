//! Reading the bridge's endpoints: GET, scrape and parse the Prometheus text,
//! and the real Prometheus server and promtool from Debian's `prometheus`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const INSTALL_HINT: &str =
    "Prometheus/promtool not found: run ./scripts/install-test-deps.sh (Debian package `prometheus`)";

/// GET `path` on the bridge's telemetry address: (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let url = url::Url::parse(&format!("http://{addr}{path}")).unwrap();
    amqp_bridge::telemetry::http::get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// One scrape, parsed.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics answered {status}");
    Scrape::parse(&text)
}

/// One sample: metric name, labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// The samples of one scrape, keyed by metric name, each with its labels.
#[derive(Debug, Default)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the Prometheus text format (the subset the bridge writes).
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value.parse().expect("numeric sample value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let labels = split_labels(body);
                    (name.to_string(), labels)
                }
                None => (series.to_string(), Vec::new()),
            };
            samples.push((name, labels, value));
        }
        Scrape {
            text: text.to_string(),
            samples,
        }
    }

    /// Every sample of `name` whose labels include all of `with`: its
    /// labels and value.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a [(String, String)], f64)> + 'a {
        self.samples.iter().filter_map(move |(n, labels, value)| {
            let all = with
                .iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v));
            (n == name && all).then_some((labels.as_slice(), *value))
        })
    }

    /// The sum of every sample of `name` whose labels include all of `with`;
    /// fails the test when there is none (a renamed or missing series must
    /// not read as 0).
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        let values: Vec<f64> = self.matching(name, with).map(|(_, v)| v).collect();
        assert!(
            !values.is_empty(),
            "no sample {name} with {with:?} in the scrape"
        );
        values.iter().sum()
    }

    /// The sum as a whole number (counters and gauges of counts).
    pub fn count(&self, name: &str, with: &[(&str, &str)]) -> u64 {
        self.sum(name, with) as u64
    }
}

fn split_labels(body: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = body;
    while let Some((key, after)) = rest.split_once("=\"") {
        // Values are escaped; the bridge's never hold quotes, so the next
        // quote ends the value.
        let end = after.find('"').expect("closing quote");
        labels.push((
            key.trim_start_matches(',').to_string(),
            after[..end].to_string(),
        ));
        rest = &after[end + 1..];
    }
    labels
}

/// The path of a Prometheus tool, failing the test with the install hint.
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{INSTALL_HINT}");
}

/// Runs promtool with `args`, feeding `stdin`; (success, stdout + stderr).
pub fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A real Prometheus on a free port, scraping `target` every second with
/// the repo's alert rules loaded.
pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts it and waits until its API answers.
    pub async fn start(target: SocketAddr, rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
                 rule_files: ['{rules}']\n\
                 scrape_configs:\n  - job_name: amqp-bridge\n    static_configs:\n      - targets: ['{target}']\n",
                rules = rules.display()
            ),
        )
        .unwrap();
        let port = super::mosquitto::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("PROMETHEUS_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
        let prometheus = Prometheus {
            addr,
            child,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let url = url::Url::parse(&format!("http://{addr}/-/ready")).unwrap();
            if let Ok((200, _)) = amqp_bridge::telemetry::http::get(&url).await {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus did not get ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    /// Evaluates `expr` now through the HTTP API: the `data.result` array,
    /// or the error Prometheus gave.
    pub async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let url = url::Url::parse_with_params(
            &format!("http://{}/api/v1/query", self.addr),
            &[("query", expr)],
        )
        .unwrap();
        let (status, body) = amqp_bridge::telemetry::http::get(&url)
            .await
            .map_err(|e| e.to_string())?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if json["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The rule groups as `/api/v1/rules` reports them.
    pub async fn rules(&self) -> serde_json::Value {
        let url = url::Url::parse(&format!("http://{}/api/v1/rules", self.addr)).unwrap();
        let (_, body) = amqp_bridge::telemetry::http::get(&url).await.unwrap();
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every label set of a scrape must come from the configuration: only these
/// label names, and no value that looks like a topic or a message id.
pub fn assert_bounded_labels(scrape: &Scrape) {
    const ALLOWED: [&str; 8] = [
        "connection",
        "route",
        "sink",
        "kind",
        "outcome",
        "le",
        "version",
        "commit",
    ];
    for (name, labels, _) in &scrape.samples {
        for (key, value) in labels {
            assert!(
                ALLOWED.contains(&key.as_str()),
                "{name} has label {key}={value}: only {ALLOWED:?} are allowed"
            );
            let message_id = value.len() >= 16 && value.bytes().all(|b| b.is_ascii_digit());
            assert!(
                !value.starts_with('/') && !message_id,
                "{name} label {key}={value} looks like a topic or message id"
            );
        }
    }
}

/// A map from the metric names to how many series each has.
pub fn series_per_metric(scrape: &Scrape) -> HashMap<String, usize> {
    let mut map = HashMap::new();
    for (name, _, _) in &scrape.samples {
        *map.entry(name.clone()).or_insert(0) += 1;
    }
    map
}
