//! `gpu.*`: lost and slow GPUs as inference servers see them (CUDA driver errors
//! through the interposer), hogs on real devices, and device denial through cgroups.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::units::{ByteSize, Duration, Percent};

/// `all`, or a list of device ordinals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Devices {
    #[default]
    All,
    List(Vec<u32>),
}

impl<'de> Deserialize<'de> for Devices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Devices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`all` or a list of device ordinals like `[0, 1]`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Devices, E> {
                if s == "all" {
                    Ok(Devices::All)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(s), &self))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Devices, A::Error> {
                let mut v = Vec::new();
                while let Some(n) = seq.next_element::<u32>()? {
                    v.push(n);
                }
                if v.is_empty() {
                    return Err(de::Error::invalid_length(0, &self));
                }
                Ok(Devices::List(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Devices {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Devices::All => s.serialize_str("all"),
            Devices::List(v) => v.serialize(s),
        }
    }
}

impl JsonSchema for Devices {
    fn schema_name() -> Cow<'static, str> {
        "Devices".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                { "const": "all" },
                { "type": "array", "items": { "type": "integer", "minimum": 0 }, "minItems": 1 }
            ]
        })
    }
}

/// The error a faulted CUDA or NVML call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GpuError {
    /// CUDA_ERROR_NO_DEVICE (100)
    NoDevice,
    /// CUDA_ERROR_DEVICE_UNAVAILABLE (46)
    DeviceUnavailable,
    /// CUDA_ERROR_ECC_UNCORRECTABLE (214)
    EccUncorrectable,
    /// CUDA_ERROR_OUT_OF_MEMORY (2)
    OutOfMemory,
    /// CUDA_ERROR_LAUNCH_FAILED (719)
    LaunchFailed,
    /// NVML_ERROR_GPU_IS_LOST (15) from NVML, CUDA_ERROR_DEVICE_UNAVAILABLE from CUDA
    GpuIsLost,
}

impl GpuError {
    /// The CUresult a faulted driver call returns.
    pub fn cuda_code(self) -> u32 {
        match self {
            GpuError::NoDevice => 100,
            GpuError::DeviceUnavailable | GpuError::GpuIsLost => 46,
            GpuError::EccUncorrectable => 214,
            GpuError::OutOfMemory => 2,
            GpuError::LaunchFailed => 719,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuUnavailable {
    #[serde(default)]
    pub devices: Devices,
    pub error: GpuError,
    /// Fail only after this many calls succeeded (a GPU lost mid-run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_calls: Option<u64>,
    /// The interposer's state file for the target processes (default: the agent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
}

/// Which driver calls `gpu.slow` delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GpuCalls {
    Launch,
    Sync,
    #[default]
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuSlow {
    #[serde(default)]
    pub devices: Devices,
    /// Added to each delayed call.
    pub delay: Duration,
    #[serde(default)]
    pub calls: GpuCalls,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuMemoryHog {
    /// Device ordinal.
    pub device: u32,
    /// Memory to take; exactly one of `size` and `share`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
    /// Share of the device's total memory to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<Percent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuComputeHog {
    pub device: u32,
    /// Target utilisation of the device's compute.
    #[serde(default = "super::hundred_percent")]
    pub utilization: Percent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuDeviceDeny {
    /// The cgroup (path under /sys/fs/cgroup) whose processes lose the devices.
    pub cgroup: String,
    #[serde(default)]
    pub devices: Devices,
}
