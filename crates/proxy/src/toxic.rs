//! Toxic configuration: typed structs, the Toxiproxy 2.x JSON shape, and the
//! partial-update rules of `POST /proxies/{proxy}/toxics/{toxic}`.
//!
//! Units follow Toxiproxy so existing clients work unchanged: milliseconds for
//! latency, jitter, delay and timeouts; KB/s (1000 bytes) for bandwidth;
//! microseconds for the slicer delay; bytes for limit_data and slice sizes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ProxyError;

/// Which direction of a proxied connection a toxic acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Client to upstream server.
    Upstream,
    /// Upstream server to client (Toxiproxy's default).
    Downstream,
}

impl Stream {
    /// Parses `upstream`/`downstream`, case-insensitively as Toxiproxy does.
    pub fn parse(text: &str) -> Result<Self, ProxyError> {
        match text.to_ascii_lowercase().as_str() {
            "upstream" => Ok(Self::Upstream),
            "downstream" => Ok(Self::Downstream),
            _ => Err(ProxyError::InvalidStream),
        }
    }

    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Downstream => "downstream",
        }
    }
}

/// `latency`: each chunk is released `latency` ± `jitter` ms after it arrived.
/// Pipelined: chunks in flight do not wait for each other, so throughput is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    /// Added delay in milliseconds.
    pub latency: u64,
    /// Uniform jitter in milliseconds, applied as ±jitter (order is kept).
    pub jitter: u64,
}

/// `bandwidth`: caps the stream at `rate` KB/s (1 KB = 1000 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bandwidth {
    /// KB/s; 0 stops the stream.
    pub rate: u64,
}

/// `slow_close`: delays the close (FIN) by `delay` ms after the source closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlowClose {
    /// Milliseconds.
    pub delay: u64,
}

/// `timeout`: a blackhole. No data passes; the connection is closed after
/// `timeout` ms, or never when 0 (until the toxic is removed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timeout {
    /// Milliseconds; 0 = hold forever.
    pub timeout: u64,
}

/// `reset_peer`: after `timeout` ms the connection is reset (RST via SO_LINGER 0)
/// on both sides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResetPeer {
    /// Milliseconds; 0 = at once.
    pub timeout: u64,
}

/// `limit_data`: the connection is closed once `bytes` bytes passed on this stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitData {
    /// Byte budget of the stream.
    pub bytes: u64,
}

/// `slicer`: writes data in slices of `average_size` ± `size_variation` bytes with
/// `delay` microseconds between slices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Slicer {
    /// Mean slice size in bytes (0 is treated as 1).
    pub average_size: u64,
    /// Uniform variation of the slice size in bytes.
    pub size_variation: u64,
    /// Microseconds between slices.
    pub delay: u64,
}

/// `refuse` (faultline extension): new connections are refused. With toxicity 1
/// the listener is closed (clients see ECONNREFUSED); with a lower toxicity,
/// accepted connections are reset at once with that probability. Established
/// connections are untouched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Refuse {}

/// `noop`: passes data unchanged (Toxiproxy has it; useful to test clients).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Noop {}

/// A toxic's type and attributes, serialized as Toxiproxy's `type` + `attributes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "attributes", rename_all = "snake_case")]
pub enum ToxicKind {
    /// See [`Latency`].
    Latency(Latency),
    /// See [`Bandwidth`].
    Bandwidth(Bandwidth),
    /// See [`SlowClose`].
    SlowClose(SlowClose),
    /// See [`Timeout`].
    Timeout(Timeout),
    /// See [`ResetPeer`].
    ResetPeer(ResetPeer),
    /// See [`LimitData`].
    LimitData(LimitData),
    /// See [`Slicer`].
    Slicer(Slicer),
    /// See [`Refuse`].
    Refuse(Refuse),
    /// See [`Noop`].
    Noop(Noop),
}

impl ToxicKind {
    /// The Toxiproxy type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Latency(_) => "latency",
            Self::Bandwidth(_) => "bandwidth",
            Self::SlowClose(_) => "slow_close",
            Self::Timeout(_) => "timeout",
            Self::ResetPeer(_) => "reset_peer",
            Self::LimitData(_) => "limit_data",
            Self::Slicer(_) => "slicer",
            Self::Refuse(_) => "refuse",
            Self::Noop(_) => "noop",
        }
    }

    /// Builds a kind from a type name and a JSON attributes object (missing
    /// attributes default to 0, unknown ones are ignored, as in Toxiproxy).
    pub fn from_parts(type_name: &str, attributes: Option<&Value>) -> Result<Self, ProxyError> {
        let attrs = match attributes {
            None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
            Some(v) => v.clone(),
        };
        let tagged = serde_json::json!({ "type": type_name, "attributes": attrs });
        match type_name {
            "latency" | "bandwidth" | "slow_close" | "timeout" | "reset_peer" | "limit_data"
            | "slicer" | "refuse" | "noop" => serde_json::from_value(tagged)
                .map_err(|e| ProxyError::BadRequestBody(e.to_string())),
            _ => Err(ProxyError::InvalidToxicType),
        }
    }

    fn attributes_json(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut map)) => map.remove("attributes").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

/// One toxic on a proxy: Toxiproxy's `{name, type, stream, toxicity, attributes}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Toxic {
    /// Unique per proxy; defaults to `{type}_{stream}`.
    pub name: String,
    /// The direction it acts on.
    pub stream: Stream,
    /// Probability in [0, 1] that a given connection is affected (rolled per
    /// connection when the toxic is added or updated).
    pub toxicity: f32,
    /// Type and attributes.
    pub kind: ToxicKind,
}

impl Toxic {
    /// A toxic with toxicity 1 and the default name `{type}_{stream}`.
    pub fn new(kind: ToxicKind, stream: Stream) -> Self {
        Self {
            name: format!("{}_{}", kind.type_name(), stream.as_str()),
            stream,
            toxicity: 1.0,
            kind,
        }
    }

    /// Sets the name.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the toxicity.
    #[must_use]
    pub fn with_toxicity(mut self, toxicity: f32) -> Self {
        self.toxicity = toxicity;
        self
    }

    /// Parses a create body the way Toxiproxy's `AddToxicJson` does: stream
    /// defaults to downstream, toxicity to 1, name to `{type}_{stream}`.
    pub fn from_create_json(body: &[u8]) -> Result<Self, ProxyError> {
        let wire: ToxicWire =
            serde_json::from_slice(body).map_err(|e| ProxyError::BadRequestBody(e.to_string()))?;
        Self::try_from(wire)
    }

    /// Applies an update body (Toxiproxy's `UpdateToxicJson`): attributes given
    /// replace those fields, the others keep their values; `toxicity` may change;
    /// name, type and stream cannot.
    pub fn updated_from_json(&self, body: &[u8]) -> Result<Self, ProxyError> {
        #[derive(Deserialize)]
        struct UpdateWire {
            attributes: Option<Value>,
            toxicity: Option<f32>,
        }
        let update: UpdateWire =
            serde_json::from_slice(body).map_err(|e| ProxyError::BadRequestBody(e.to_string()))?;
        let mut attrs = self.kind.attributes_json();
        if let (Value::Object(current), Some(Value::Object(new))) = (&mut attrs, update.attributes)
        {
            for (k, v) in new {
                current.insert(k, v);
            }
        }
        let kind = ToxicKind::from_parts(self.kind.type_name(), Some(&attrs))?;
        let toxicity = update.toxicity.unwrap_or(self.toxicity);
        validate_toxicity(toxicity)?;
        Ok(Self {
            name: self.name.clone(),
            stream: self.stream,
            toxicity,
            kind,
        })
    }
}

fn validate_toxicity(toxicity: f32) -> Result<(), ProxyError> {
    if (0.0..=1.0).contains(&toxicity) {
        Ok(())
    } else {
        Err(ProxyError::BadRequestBody(format!(
            "toxicity must be between 0 and 1, got {toxicity}"
        )))
    }
}

/// The JSON shape on the wire; every field optional so defaults apply.
#[derive(Debug, Serialize, Deserialize)]
struct ToxicWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attributes: Option<Value>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "type")]
    type_name: Option<String>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    toxicity: Option<f32>,
}

impl TryFrom<ToxicWire> for Toxic {
    type Error = ProxyError;

    fn try_from(wire: ToxicWire) -> Result<Self, ProxyError> {
        let stream_text = wire.stream.unwrap_or_else(|| "downstream".to_owned());
        let stream = Stream::parse(&stream_text)?;
        let type_name = wire.type_name.unwrap_or_default();
        let kind = ToxicKind::from_parts(&type_name, wire.attributes.as_ref())?;
        let toxicity = wire.toxicity.unwrap_or(1.0);
        validate_toxicity(toxicity)?;
        let name = match wire.name {
            Some(n) if !n.is_empty() => n,
            _ => format!("{}_{}", type_name, stream_text),
        };
        Ok(Self {
            name,
            stream,
            toxicity,
            kind,
        })
    }
}

impl Serialize for Toxic {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Out<'a> {
            attributes: Value,
            name: &'a str,
            #[serde(rename = "type")]
            type_name: &'static str,
            stream: &'static str,
            toxicity: f32,
        }
        Out {
            attributes: self.kind.attributes_json(),
            name: &self.name,
            type_name: self.kind.type_name(),
            stream: self.stream.as_str(),
            toxicity: self.toxicity,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Toxic {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = ToxicWire::deserialize(deserializer)?;
        Self::try_from(wire).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_defaults_like_toxiproxy() {
        let t =
            Toxic::from_create_json(br#"{"type":"latency","attributes":{"latency":100}}"#).unwrap();
        assert_eq!(t.name, "latency_downstream");
        assert_eq!(t.stream, Stream::Downstream);
        assert!((t.toxicity - 1.0).abs() < f32::EPSILON);
        assert_eq!(
            t.kind,
            ToxicKind::Latency(Latency {
                latency: 100,
                jitter: 0
            })
        );
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"attributes":{"latency":100,"jitter":0},"name":"latency_downstream",
                "type":"latency","stream":"downstream","toxicity":1.0})
        );
    }

    #[test]
    fn errors_match_toxiproxy() {
        let e = Toxic::from_create_json(br#"{"type":"nope"}"#).unwrap_err();
        assert_eq!(e.to_string(), "invalid toxic type");
        let e = Toxic::from_create_json(br#"{"type":"latency","stream":"sideways"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "stream was invalid, can be either upstream or downstream"
        );
        let e = Toxic::from_create_json(b"{").unwrap_err();
        assert!(e.to_string().starts_with("bad request body: "));
    }

    #[test]
    fn update_merges_attributes() {
        let t = Toxic::new(
            ToxicKind::Latency(Latency {
                latency: 100,
                jitter: 5,
            }),
            Stream::Upstream,
        );
        let u = t
            .updated_from_json(br#"{"attributes":{"latency":50},"toxicity":0.5}"#)
            .unwrap();
        assert_eq!(
            u.kind,
            ToxicKind::Latency(Latency {
                latency: 50,
                jitter: 5
            })
        );
        assert!((u.toxicity - 0.5).abs() < f32::EPSILON);
        assert_eq!(u.name, "latency_upstream");
    }
}
