//! Topic routes from the name server: which brokers hold a topic's queues.

use std::collections::HashMap;

use serde::Deserialize;

/// The name server's answer for one topic (`TopicRouteData`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TopicRouteData {
    #[serde(default)]
    pub broker_datas: Vec<BrokerData>,
    #[serde(default)]
    pub queue_datas: Vec<QueueData>,
}

/// One broker group: its name and the address of each member (id 0 = master).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BrokerData {
    pub broker_name: String,
    #[serde(default)]
    pub broker_addrs: HashMap<String, String>,
}

/// A topic's queues on one broker group.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueueData {
    pub broker_name: String,
    #[serde(default)]
    pub read_queue_nums: u32,
    #[serde(default)]
    pub write_queue_nums: u32,
    #[serde(default)]
    pub perm: u32,
}

/// `perm` bit: the queues take writes.
const PERM_WRITE: u32 = 0b010;
/// More write queues than any real topic has; a larger count is corrupt.
const MAX_QUEUES: u32 = 1024;
/// The master's id in `brokerAddrs`.
const MASTER_ID: &str = "0";

/// One queue a message can be sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageQueue {
    pub broker_name: String,
    pub broker_addr: String,
    pub queue_id: u32,
}

impl TopicRouteData {
    /// Parses the body of a route response. Name servers before 4.9.4 write
    /// map keys as bare integers (`{0:"host:port"}`), which is not JSON; such
    /// keys are quoted before a second attempt.
    pub fn parse(body: &[u8]) -> Result<TopicRouteData, String> {
        parse_lenient(body)
    }

    /// Every writable queue on a broker group whose master is known, at most
    /// `limit` per group (the default-topic fallback asks for 4, as the Java
    /// client does).
    pub fn writable_queues(&self, limit: Option<u32>) -> Vec<MessageQueue> {
        let mut queues = Vec::new();
        for data in &self.queue_datas {
            if data.perm & PERM_WRITE == 0 {
                continue;
            }
            let Some(addr) = self
                .broker_datas
                .iter()
                .find(|b| b.broker_name == data.broker_name)
                .and_then(|b| b.broker_addrs.get(MASTER_ID))
            else {
                continue;
            };
            let count = limit
                .unwrap_or(MAX_QUEUES)
                .min(data.write_queue_nums)
                .min(MAX_QUEUES);
            queues.extend((0..count).map(|queue_id| MessageQueue {
                broker_name: data.broker_name.clone(),
                broker_addr: addr.clone(),
                queue_id,
            }));
        }
        queues
    }
}

/// Parses JSON, retrying once with bare integer map keys quoted.
pub fn parse_lenient<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    match serde_json::from_slice(body) {
        Ok(parsed) => Ok(parsed),
        Err(first) => {
            let text = String::from_utf8_lossy(body);
            serde_json::from_str(&quote_integer_keys(&text)).map_err(|_| first.to_string())
        }
    }
}

/// Quotes integer object keys outside strings: `{0:"a",1:"b"}` → `{"0":"a","1":"b"}`.
fn quote_integer_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    // Open brackets outside strings, innermost last.
    let mut open = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut expect_key = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if expect_key && (c == '-' || c.is_ascii_digit()) {
            let mut number = String::from(c);
            while let Some(&d) = chars.peek() {
                if !d.is_ascii_digit() {
                    break;
                }
                number.push(d);
                chars.next();
            }
            out.push('"');
            out.push_str(&number);
            out.push('"');
            expect_key = false;
            continue;
        }
        out.push(c);
        match c {
            '"' => {
                in_string = true;
                expect_key = false;
            }
            '{' | '[' => {
                open.push(c);
                expect_key = c == '{';
            }
            '}' | ']' => {
                open.pop();
                expect_key = false;
            }
            ',' => expect_key = open.last() == Some(&'{'),
            c if c.is_whitespace() => {}
            _ => expect_key = false,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANDARD: &str = r#"{"brokerDatas":[{"brokerAddrs":{"0":"127.0.0.1:10911","1":"127.0.0.1:10921"},"brokerName":"broker-a","cluster":"DefaultCluster"},{"brokerAddrs":{"1":"127.0.0.1:10931"},"brokerName":"broker-b","cluster":"DefaultCluster"}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"topicSysFlag":0,"writeQueueNums":4},{"brokerName":"broker-b","perm":6,"readQueueNums":2,"topicSysFlag":0,"writeQueueNums":2}]}"#;

    #[test]
    fn writable_queues_only_on_known_masters() {
        let route = TopicRouteData::parse(STANDARD.as_bytes()).unwrap();
        let queues = route.writable_queues(None);
        // broker-b has no master (only id 1): nothing can be written there.
        assert_eq!(queues.len(), 4);
        assert!(queues.iter().all(|q| q.broker_addr == "127.0.0.1:10911"));
        assert_eq!(route.writable_queues(Some(2)).len(), 2);
    }

    #[test]
    fn read_only_queues_are_skipped() {
        let text = STANDARD.replace(r#""perm":6"#, r#""perm":4"#);
        let route = TopicRouteData::parse(text.as_bytes()).unwrap();
        assert!(route.writable_queues(None).is_empty());
    }

    #[test]
    fn bare_integer_keys_of_old_name_servers() {
        let old = r#"{"brokerDatas":[{"brokerAddrs":{0:"10.0.0.1:10911", 1:"10.0.0.2:10911"},"brokerName":"b,0:x","cluster":"c"}],"queueDatas":[{"brokerName":"b,0:x","perm":6,"writeQueueNums":8}]}"#;
        let route = TopicRouteData::parse(old.as_bytes()).unwrap();
        assert_eq!(route.broker_datas[0].broker_addrs["0"], "10.0.0.1:10911");
        // The look-alike inside a string is left as it was.
        assert_eq!(route.broker_datas[0].broker_name, "b,0:x");
        assert_eq!(route.writable_queues(None).len(), 8);
    }

    #[test]
    fn corrupt_queue_counts_are_capped() {
        let text = STANDARD.replace(r#""writeQueueNums":4"#, r#""writeQueueNums":4000000000"#);
        let route = TopicRouteData::parse(text.as_bytes()).unwrap();
        assert_eq!(route.writable_queues(None).len(), 1024);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(TopicRouteData::parse(b"not json").is_err());
    }
}
