//! `[train] batch-size`: a number, or `"auto"` for the memory planner to
//! choose (with `effective-batch-size`, `memory-budget` and `auto-batch`).

use std::fmt;

use lora_core::memory::Budget;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Fixed(usize),
    /// The largest micro-batch that fits the memory budget (or the fastest, in
    /// throughput mode), chosen before training.
    Auto,
}

impl Serialize for BatchSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BatchSize::Fixed(n) => s.serialize_u64(*n as u64),
            BatchSize::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = BatchSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive integer or \"auto\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<BatchSize, E> {
                usize::try_from(v)
                    .map(BatchSize::Fixed)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<BatchSize, E> {
                Ok(BatchSize::Fixed(v as usize))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BatchSize, E> {
                // A quoted number is a wrong type, like any string but "auto".
                match v {
                    "auto" => Ok(BatchSize::Auto),
                    _ => Err(E::invalid_type(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `memory-budget`: `"4GiB"` (bytes with a unit) or a share of the available memory.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryBudget(pub Budget, pub String);

impl Serialize for MemoryBudget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Budget::Fraction(f) => s.serialize_f64(f),
            Budget::Bytes(_) => s.serialize_str(&self.1),
        }
    }
}

impl<'de> Deserialize<'de> for MemoryBudget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MemoryBudget;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "bytes with a unit (\"4GiB\", \"512MiB\") or a share of the available memory (0 < share <= 1)",
                )
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<MemoryBudget, E> {
                if v > 0.0 && v <= 1.0 {
                    Ok(MemoryBudget(Budget::Fraction(v), v.to_string()))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MemoryBudget, E> {
                self.visit_f64(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MemoryBudget, E> {
                self.visit_f64(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MemoryBudget, E> {
                Budget::parse(v)
                    .map(|b| MemoryBudget(b, v.to_string()))
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// `auto-batch`: what "auto" maximises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AutoMode {
    /// The largest micro-batch that fits.
    #[default]
    Memory,
    /// The fastest per example of the micro-batches that fit, timed on a few steps.
    Throughput,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize)]
    struct T {
        b: BatchSize,
        m: Option<MemoryBudget>,
    }

    #[test]
    fn numbers_and_auto_round_trip() {
        let t: T = toml::from_str("b = 16\nm = \"4GiB\"").unwrap();
        assert_eq!(
            (t.b, t.m.clone().unwrap().0),
            (BatchSize::Fixed(16), Budget::Bytes(4 << 30))
        );
        assert_eq!(toml::to_string(&t).unwrap(), "b = 16\nm = \"4GiB\"\n");
        let t: T = toml::from_str("b = \"auto\"\nm = 0.5").unwrap();
        assert_eq!((t.b, t.m.unwrap().0), (BatchSize::Auto, Budget::Fraction(0.5)));
        assert!(toml::from_str::<T>("b = \"big\"").is_err());
        assert!(toml::from_str::<T>("b = 1\nm = 1.5").is_err());
        assert!(toml::from_str::<T>("b = 1\nm = \"4 furlongs\"").is_err());
    }
}
