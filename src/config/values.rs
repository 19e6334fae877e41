//! Value types of the configuration that validate themselves while parsing,
//! so that the parser reports their errors at the right line and column.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A credential: usable by the code, printed as `***` everywhere else
/// (Debug, Display, `check` output).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value that must never be printed.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The real value, for signing and logging in only.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when nothing was configured (`${VAR:-}` left it empty).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A duration written as `500ms`, `30s`, `5m`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Shorthand for config defaults.
    pub const fn from_millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }
    /// Shorthand for config defaults.
    pub const fn from_secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str_with(d, "a duration like 500ms, 30s or 5m", parse_duration)
    }
}

fn parse_duration(text: &str) -> Result<HumanDuration, String> {
    humantime::parse_duration(text.trim())
        .map(HumanDuration)
        .map_err(|e| format!("invalid duration `{text}`: {e} (write e.g. 500ms, 30s, 5m)"))
}

/// Parses a duration and checks it lies within `min..=max`.
pub(crate) fn duration_in<'de, D: Deserializer<'de>>(
    d: D,
    min: Duration,
    max: Duration,
) -> Result<HumanDuration, D::Error> {
    parse_str_with(d, "a duration", |text| {
        let value = parse_duration(text)?;
        if value.0 < min || value.0 > max {
            return Err(format!(
                "duration {} out of range {}..{}",
                humantime::format_duration(value.0),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ));
        }
        Ok(value)
    })
}

/// Deserializes a string through `parse`. The check runs inside the parser's
/// visitor, so its error carries the value's own line and key path.
pub(crate) fn parse_str_with<'de, D, T, F>(
    d: D,
    expecting: &'static str,
    parse: F,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    struct StrVisitor<F>(F, &'static str);
    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for StrVisitor<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.1)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(StrVisitor(parse, expecting))
}

/// Parses an integer and checks it lies within `min..=max`, reporting the
/// error at the value's own line.
pub(crate) fn integer_in<'de, D: Deserializer<'de>, T>(d: D, min: T, max: T) -> Result<T, D::Error>
where
    T: TryFrom<u64> + PartialOrd + fmt::Display + Copy,
{
    struct IntVisitor<T> {
        min: T,
        max: T,
    }
    impl<T> Visitor<'_> for IntVisitor<T>
    where
        T: TryFrom<u64> + PartialOrd + fmt::Display + Copy,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "an integer in {}..={}", self.min, self.max)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
            match T::try_from(v) {
                Ok(value) if value >= self.min && value <= self.max => Ok(value),
                _ => Err(E::custom(format!(
                    "value {v} out of range {}..={}",
                    self.min, self.max
                ))),
            }
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::custom(format!(
                    "value {v} out of range {}..={}",
                    self.min, self.max
                ))),
            }
        }
    }
    d.deserialize_u64(IntVisitor { min, max })
}

thread_local! {
    /// Sink names and kinds found by the first parsing pass; the second pass
    /// checks references against them while the parser still knows the position.
    static KNOWN_SINKS: RefCell<Option<BTreeMap<String, String>>> = const { RefCell::new(None) };
}

/// Runs `f` with the given sinks known to [`SinkName`] and the sink map parser.
pub(crate) fn with_known_sinks<R>(sinks: BTreeMap<String, String>, f: impl FnOnce() -> R) -> R {
    KNOWN_SINKS.with(|k| *k.borrow_mut() = Some(sinks));
    let result = f();
    KNOWN_SINKS.with(|k| *k.borrow_mut() = None);
    result
}

thread_local! {
    /// Sinks the first pass saw with `idempotence: false`.
    static NOT_IDEMPOTENT: RefCell<Option<std::collections::BTreeSet<String>>> =
        const { RefCell::new(None) };
    /// The sink whose definition the second pass is reading.
    static CURRENT_SINK: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f` with the sinks the first pass saw with `idempotence: false`
/// known, so that a key depending on it (Kafka's `acks: 1`) is checked while
/// the parser still knows that key's position.
pub(crate) fn with_not_idempotent<R>(
    sinks: std::collections::BTreeSet<String>,
    f: impl FnOnce() -> R,
) -> R {
    NOT_IDEMPOTENT.with(|k| *k.borrow_mut() = Some(sinks));
    let result = f();
    NOT_IDEMPOTENT.with(|k| *k.borrow_mut() = None);
    result
}

/// Runs `f` (parsing sink `name`'s definition) with `name` as the current sink.
pub(crate) fn reading_sink<R>(name: &str, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT_SINK.with(|c| c.borrow_mut().replace(name.to_string()));
    let result = f();
    CURRENT_SINK.with(|c| *c.borrow_mut() = previous);
    result
}

/// Whether the sink being parsed says `idempotence: false` (per the first
/// pass); `None` outside [`with_not_idempotent`] and [`reading_sink`].
pub(crate) fn current_sink_not_idempotent() -> Option<bool> {
    let name = CURRENT_SINK.with(|c| c.borrow().clone())?;
    NOT_IDEMPOTENT.with(|k| k.borrow().as_ref().map(|set| set.contains(&name)))
}

/// The kind the first pass saw for a sink name, if any.
pub(crate) fn known_sink_kind(name: &str) -> Option<String> {
    KNOWN_SINKS.with(|k| k.borrow().as_ref().and_then(|m| m.get(name).cloned()))
}

/// A reference to a sink defined under `sinks:`; a name with no such sink is a
/// parse error at the reference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SinkName(pub String);

impl fmt::Display for SinkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SinkName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str_with(d, "the name of a sink", check_sink_name)
    }
}

fn check_sink_name(name: &str) -> Result<SinkName, String> {
    let name = name.to_string();
    {
        let known = KNOWN_SINKS.with(|k| {
            k.borrow()
                .as_ref()
                .map(|m| (m.contains_key(&name), m.keys().cloned().collect::<Vec<_>>()))
        });
        match known {
            Some((false, names)) => Err(format!(
                "no sink named `{name}` (defined sinks: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )),
            _ => Ok(SinkName(name)),
        }
    }
}
