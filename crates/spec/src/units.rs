//! Units as they are written in experiments: durations (`500ms`), rates (`200/s`),
//! percents (`99.9%`), sizes (`64KiB`), byte rates (`1MiB/s`), target modes
//! (`percent(50)`) and threshold comparisons (`>= 99.9%`).
//!
//! Each is parsed from a string with `FromStr`, whose error already reads
//! "expected X, found Y", so a located diagnostic needs no rewording.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A unit string that did not parse. The message says what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, found `{found}`")]
pub struct UnitError {
    pub expected: &'static str,
    pub found: String,
}

impl UnitError {
    fn new(expected: &'static str, found: &str) -> Self {
        Self {
            expected,
            found: found.to_owned(),
        }
    }
}

/// Implements `Deserialize` (from a string only), `Serialize` (through `Display`) and
/// `JsonSchema` (a string with a pattern) for a type that is written as a unit string.
macro_rules! unit_string {
    ($ty:ty, $name:literal, $expecting:literal, $pattern:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$ty, E> {
                        s.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": $expecting,
                })
            }
        }
    };
}

// === impl Duration ===

/// A non-negative span of time written with a unit: `250ms`, `2s`, `1m30s`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

const DURATION_EXPECTED: &str = "a duration with a unit like `500ms`, `2s` or `1m30s`";

impl Duration {
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    pub fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Duration {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let t = s.trim();
        // humantime accepts a bare `0`; everything else needs a unit, and so do we.
        if t.is_empty()
            || !t.starts_with(|c: char| c.is_ascii_digit())
            || t.ends_with(|c: char| c.is_ascii_digit())
        {
            return Err(UnitError::new(DURATION_EXPECTED, s));
        }
        humantime::parse_duration(t)
            .map(Duration)
            .map_err(|_| UnitError::new(DURATION_EXPECTED, s))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0)).map(|_| ())
    }
}

unit_string!(
    Duration,
    "Duration",
    "a duration with a unit like `500ms`, `2s` or `1m30s`",
    r"^\s*[0-9]+(\.[0-9]+)?\s*(ns|us|µs|ms|s|sec|m|min|h|hr|d)([0-9]+(\.[0-9]+)?\s*(ns|us|µs|ms|s|sec|m|min|h|hr|d))*\s*$"
);

// === impl Rate ===

/// Events per second, written as `200/s`, `30/m` or `10/h`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Rate {
    per_second: f64,
    text_unit: RateUnit,
    count: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum RateUnit {
    Second,
    Minute,
    Hour,
}

const RATE_EXPECTED: &str = "a positive rate like `200/s`, `30/m` or `10/h`";

impl Rate {
    /// One per second: the default for cheap background probes.
    pub fn slow_default() -> Rate {
        Rate {
            per_second: 1.0,
            text_unit: RateUnit::Second,
            count: 1.0,
        }
    }
    pub fn per_second(self) -> f64 {
        self.per_second
    }
    /// The time between two events at this rate.
    pub fn interval(self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(1.0 / self.per_second)
    }
}

impl FromStr for Rate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let err = || UnitError::new(RATE_EXPECTED, s);
        let (n, unit) = s.trim().split_once('/').ok_or_else(err)?;
        let count: f64 = n.trim().parse().map_err(|_| err())?;
        let (text_unit, secs) = match unit.trim() {
            "s" | "sec" => (RateUnit::Second, 1.0),
            "m" | "min" => (RateUnit::Minute, 60.0),
            "h" | "hr" => (RateUnit::Hour, 3600.0),
            _ => return Err(err()),
        };
        if !count.is_finite() || count <= 0.0 {
            return Err(err());
        }
        Ok(Rate {
            per_second: count / secs,
            text_unit,
            count,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = match self.text_unit {
            RateUnit::Second => "s",
            RateUnit::Minute => "m",
            RateUnit::Hour => "h",
        };
        write!(f, "{}/{u}", self.count)
    }
}

unit_string!(
    Rate,
    "Rate",
    "a positive rate like `200/s`, `30/m` or `10/h`",
    r"^\s*[0-9]+(\.[0-9]+)?\s*/\s*(s|sec|m|min|h|hr)\s*$"
);

// === impl Percent ===

/// A percentage in 0..=100, written with a `%` sign: `99.9%`, `50%`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Percent(f64);

const PERCENT_EXPECTED: &str = "a percentage between 0% and 100% like `99.9%`";

impl Percent {
    pub const HUNDRED: Percent = Percent(100.0);

    pub fn new(value: f64) -> Option<Self> {
        (value.is_finite() && (0.0..=100.0).contains(&value)).then_some(Percent(value))
    }
    /// The value in percent, 0..=100.
    pub fn value(self) -> f64 {
        self.0
    }
    /// The value as a ratio, 0..=1.
    pub fn ratio(self) -> f64 {
        self.0 / 100.0
    }
}

impl FromStr for Percent {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let n = s
            .trim()
            .strip_suffix('%')
            .ok_or_else(|| UnitError::new(PERCENT_EXPECTED, s))?;
        n.trim()
            .parse::<f64>()
            .ok()
            .and_then(Percent::new)
            .ok_or_else(|| UnitError::new(PERCENT_EXPECTED, s))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

unit_string!(
    Percent,
    "Percent",
    "a percentage between 0% and 100% like `99.9%`",
    r"^\s*[0-9]+(\.[0-9]+)?\s*%\s*$"
);

// === impl ByteSize ===

/// A size in bytes with a unit: `512B`, `64KiB`, `10MB`, `2GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

const SIZE_EXPECTED: &str = "a size with a unit like `512B`, `64KiB` or `10MB`";

const SIZE_UNITS: &[(&str, u64)] = &[
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("B", 1),
];

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let t = s.trim();
        let err = || UnitError::new(SIZE_EXPECTED, s);
        let (num, mult) = SIZE_UNITS
            .iter()
            .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n.trim(), *m)))
            .ok_or_else(err)?;
        let n: f64 = num.parse().map_err(|_| err())?;
        let bytes = n * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 || bytes.fract() != 0.0 {
            return Err(err());
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (u, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{u}", self.0 / m);
            }
        }
        write!(f, "{}B", self.0)
    }
}

unit_string!(
    ByteSize,
    "ByteSize",
    "a size with a unit like `512B`, `64KiB` or `10MB`",
    r"^\s*[0-9]+(\.[0-9]+)?\s*(B|KiB|MiB|GiB|TiB|KB|kB|MB|GB|TB)\s*$"
);

// === impl ByteRate ===

/// A bandwidth: a size per second, `1MiB/s`, `500KB/s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteRate(pub ByteSize);

const BYTE_RATE_EXPECTED: &str = "a bandwidth like `1MiB/s` or `500KB/s`";

impl ByteRate {
    pub fn bytes_per_second(self) -> u64 {
        self.0.0
    }
}

impl FromStr for ByteRate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let err = || UnitError::new(BYTE_RATE_EXPECTED, s);
        let size = s.trim().strip_suffix("/s").ok_or_else(err)?;
        let size: ByteSize = size.parse().map_err(|_| err())?;
        if size.0 == 0 {
            return Err(err());
        }
        Ok(ByteRate(size))
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

unit_string!(
    ByteRate,
    "ByteRate",
    "a bandwidth like `1MiB/s` or `500KB/s`",
    r"^\s*[0-9]+(\.[0-9]+)?\s*(B|KiB|MiB|GiB|KB|kB|MB|GB)/s\s*$"
);

// === impl SelectMode ===

/// How many of the agents that a target's selector matches are hit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SelectMode {
    /// Every matching agent.
    #[default]
    All,
    /// `count(n)`: n agents chosen at random (reproducible with `--seed`).
    Count(u32),
    /// `percent(p)`: p% of the matching agents, rounded up, at least one.
    Percent(Percent),
}

const MODE_EXPECTED: &str = "`all`, `count(N)` with N >= 1, or `percent(P)` with 0 < P <= 100";

impl FromStr for SelectMode {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let err = || UnitError::new(MODE_EXPECTED, s);
        let t = s.trim();
        if t == "all" {
            return Ok(SelectMode::All);
        }
        let arg = |name: &str| {
            t.strip_prefix(name)
                .and_then(|r| r.trim().strip_prefix('('))
                .and_then(|r| r.strip_suffix(')'))
                .map(str::trim)
        };
        if let Some(n) = arg("count") {
            return match n.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(SelectMode::Count(n)),
                _ => Err(err()),
            };
        }
        if let Some(p) = arg("percent") {
            let p = p.strip_suffix('%').unwrap_or(p).trim();
            return match p.parse::<f64>().ok().and_then(Percent::new) {
                Some(p) if p.value() > 0.0 => Ok(SelectMode::Percent(p)),
                _ => Err(err()),
            };
        }
        Err(err())
    }
}

impl fmt::Display for SelectMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectMode::All => f.write_str("all"),
            SelectMode::Count(n) => write!(f, "count({n})"),
            SelectMode::Percent(p) => write!(f, "percent({})", p.value()),
        }
    }
}

unit_string!(
    SelectMode,
    "SelectMode",
    "`all`, `count(N)` with N >= 1, or `percent(P)` with 0 < P <= 100",
    r"^\s*(all|count\(\s*[0-9]+\s*\)|percent\(\s*[0-9]+(\.[0-9]+)?\s*%?\s*\))\s*$"
);

// === impl Threshold ===

/// A comparison operator in a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Cmp {
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "<")]
    Lt,
}

impl Cmp {
    pub fn holds<T: PartialOrd>(self, actual: &T, bound: &T) -> bool {
        match self {
            Cmp::Ge => actual >= bound,
            Cmp::Gt => actual > bound,
            Cmp::Le => actual <= bound,
            Cmp::Lt => actual < bound,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Cmp::Ge => ">=",
            Cmp::Gt => ">",
            Cmp::Le => "<=",
            Cmp::Lt => "<",
        }
    }
}

/// A value the threshold can bound. Each says how it is written, for errors and the schema.
pub trait ThresholdValue: FromStr + fmt::Display + PartialOrd + Copy {
    const EXPECTED: &'static str;
    const NAME: &'static str;
    const VALUE_PATTERN: &'static str;
}

impl ThresholdValue for Percent {
    const EXPECTED: &'static str = "a comparison with a percentage like `>= 99.9%`";
    const NAME: &'static str = "PercentThreshold";
    const VALUE_PATTERN: &'static str = r"[0-9]+(\.[0-9]+)?\s*%";
}

impl ThresholdValue for Duration {
    const EXPECTED: &'static str = "a comparison with a duration like `<= 500ms`";
    const NAME: &'static str = "DurationThreshold";
    const VALUE_PATTERN: &'static str = r"[0-9]+(\.[0-9]+)?\s*[a-zµ]+.*";
}

/// A plain number (burn rates, Prometheus values).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Number(pub f64);

impl FromStr for Number {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(Number)
            .ok_or_else(|| UnitError::new("a number", s))
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl ThresholdValue for Number {
    const EXPECTED: &'static str = "a comparison with a number like `<= 2`";
    const NAME: &'static str = "NumberThreshold";
    const VALUE_PATTERN: &'static str = r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?";
}

/// `>= 99.9%`, `<= 500ms`, `< 2`: an operator and a bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold<T> {
    pub cmp: Cmp,
    pub bound: T,
}

impl<T: ThresholdValue> Threshold<T> {
    pub fn holds(&self, actual: T) -> bool {
        self.cmp.holds(&actual, &self.bound)
    }
}

impl<T: ThresholdValue> FromStr for Threshold<T> {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let t = s.trim();
        let (cmp, rest) = [
            (">=", Cmp::Ge),
            ("<=", Cmp::Le),
            (">", Cmp::Gt),
            ("<", Cmp::Lt),
        ]
        .into_iter()
        .find_map(|(op, cmp)| t.strip_prefix(op).map(|r| (cmp, r)))
        .ok_or_else(|| UnitError::new(T::EXPECTED, s))?;
        let bound = rest
            .trim()
            .parse()
            .map_err(|_| UnitError::new(T::EXPECTED, s))?;
        Ok(Threshold { cmp, bound })
    }
}

impl<T: fmt::Display> fmt::Display for Threshold<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.cmp.as_str(), self.bound)
    }
}

impl<'de, T: ThresholdValue> Deserialize<'de> for Threshold<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: ThresholdValue> Visitor<'_> for V<T> {
            type Value = Threshold<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Threshold<T>, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

impl<T: fmt::Display> Serialize for Threshold<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<T: ThresholdValue> JsonSchema for Threshold<T> {
    fn schema_name() -> Cow<'static, str> {
        T::NAME.into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let pattern = format!(r"^\s*(>=|<=|>|<)\s*{}\s*$", T::VALUE_PATTERN);
        json_schema!({
            "type": "string",
            "pattern": pattern,
            "description": T::EXPECTED,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(
            "500ms".parse::<Duration>().unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            "1m30s".parse::<Duration>().unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!("0s".parse::<Duration>().unwrap(), Duration::ZERO);
        for bad in ["", "5", "-5s", "s", "five seconds", "5 parsecs"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(Duration::from_millis(1500).to_string(), "1s 500ms");
    }

    #[test]
    fn rates_percents_sizes() {
        assert_eq!("200/s".parse::<Rate>().unwrap().per_second(), 200.0);
        assert_eq!("30/m".parse::<Rate>().unwrap().per_second(), 0.5);
        assert!("0/s".parse::<Rate>().is_err());
        assert!("200".parse::<Rate>().is_err());
        assert_eq!("99.9%".parse::<Percent>().unwrap().value(), 99.9);
        assert!("101%".parse::<Percent>().is_err());
        assert!("50".parse::<Percent>().is_err());
        assert_eq!("64KiB".parse::<ByteSize>().unwrap().bytes(), 65536);
        assert_eq!("10MB".parse::<ByteSize>().unwrap().bytes(), 10_000_000);
        assert!("10".parse::<ByteSize>().is_err());
        assert_eq!(
            "1MiB/s".parse::<ByteRate>().unwrap().bytes_per_second(),
            1 << 20
        );
    }

    #[test]
    fn modes_and_thresholds() {
        assert_eq!("all".parse::<SelectMode>().unwrap(), SelectMode::All);
        assert_eq!(
            "count(3)".parse::<SelectMode>().unwrap(),
            SelectMode::Count(3)
        );
        assert!(
            matches!("percent(50)".parse::<SelectMode>().unwrap(), SelectMode::Percent(p) if p.value() == 50.0)
        );
        for bad in ["count(0)", "percent(0)", "percent(101)", "some", "count()"] {
            assert!(bad.parse::<SelectMode>().is_err(), "{bad:?} parsed");
        }
        let t: Threshold<Percent> = ">= 99.9%".parse().unwrap();
        assert!(t.holds(Percent::new(99.95).unwrap()));
        assert!(!t.holds(Percent::new(99.0).unwrap()));
        let t: Threshold<Duration> = "<= 500ms".parse().unwrap();
        assert!(t.holds(Duration::from_millis(500)));
        assert!("=< 5ms".parse::<Threshold<Duration>>().is_err());
        assert!("<= 5".parse::<Threshold<Duration>>().is_err());
    }
}
