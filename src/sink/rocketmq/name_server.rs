//! Asking the name servers: which brokers exist, where a topic's queues are.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::acl::{sign, AclCredentials};
use super::codec::{request_code, response_code, Command};
use super::connection::Pool;
use super::route::{parse_lenient, TopicRouteData};

/// The configured name servers, asked in turn, starting with the last that answered.
pub(super) struct NameServers {
    /// The sink's name, for logs.
    pub sink: Arc<str>,
    pub addrs: Vec<String>,
    pub next: AtomicUsize,
    pub acl: Option<AclCredentials>,
    pub timeout: Duration,
    pub pool: Arc<Pool>,
}

/// The outcome of asking the name servers for one topic.
pub(super) enum RouteAnswer {
    Found(TopicRouteData),
    NotFound,
}

impl NameServers {
    /// Sends a request to the name servers in turn until one answers.
    pub(super) async fn ask(&self, mut command: Command) -> Result<Command, String> {
        if let Some(acl) = &self.acl {
            sign(&mut command, acl);
        }
        let start = self.next.load(Ordering::Relaxed);
        let mut last_error = String::from("no name server configured");
        for i in 0..self.addrs.len() {
            let index = (start + i) % self.addrs.len();
            let addr = &self.addrs[index];
            let answer = match self.pool.get(addr).await {
                Ok(connection) => connection.request(command.clone(), self.timeout).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(response) => {
                    self.next.store(index, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(last_error)
    }

    /// How many brokers the name server knows.
    pub(super) async fn cluster_brokers(&self) -> Result<usize, String> {
        let response = self
            .ask(Command::request(
                request_code::GET_BROKER_CLUSTER_INFO,
                Default::default(),
            ))
            .await?;
        if response.code != response_code::SUCCESS {
            // It answered, which is what readiness needs; the count is unknown.
            return Ok(0);
        }
        let info: serde_json::Value = parse_lenient(&response.body)?;
        Ok(info
            .get("brokerAddrTable")
            .and_then(|t| t.as_object())
            .map_or(0, |t| t.len()))
    }

    pub(super) async fn fetch_route(&self, topic: &str) -> Result<RouteAnswer, String> {
        let command = Command::request(
            request_code::GET_ROUTEINFO_BY_TOPIC,
            [("topic".to_string(), topic.to_string())].into(),
        );
        let response = self.ask(command).await?;
        tracing::debug!(sink = %self.sink, topic, code = response.code, "route asked");
        match response.code {
            response_code::SUCCESS => TopicRouteData::parse(&response.body)
                .map(RouteAnswer::Found)
                .map_err(|e| format!("unreadable route of `{topic}`: {e}")),
            response_code::TOPIC_NOT_EXIST => Ok(RouteAnswer::NotFound),
            code => Err(format!(
                "name server answered code {code} for the route of `{topic}`: {}",
                response.remark.unwrap_or_default()
            )),
        }
    }
}
