//! Telemetry payload (`contracts/schemas/telemetry.schema.json`): the board's readings,
//! each with a name and a unit, and the wall-clock time they were taken. The
//! `sample_sensors` command answers the same shape.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Most readings one message may carry.
pub const MAX_READINGS: usize = 32;
/// Longest reading name: `[a-z][a-z0-9_]*`, at most this many characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest unit.
pub const MAX_UNIT_CHARS: usize = 16;

/// One measured quantity, e.g. `temperature` 21.4 `Cel`. Units are UCUM case-sensitive
/// codes where one exists (`Cel`, `%RH`, `hPa`, `V`), empty for a plain count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

impl Reading {
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Reading { name: name.into(), value, unit: unit.into() }
    }
}

/// `{at, readings}`: what the device publishes on `devices/{id}/telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// Unix time in milliseconds (the device's clock).
    pub at: u64,
    pub readings: Vec<Reading>,
}

/// Why readings cannot be sent: the broker would refuse them (and count them), so the
/// device says so itself instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelemetryError {
    Json(String),
    NoReadings,
    TooManyReadings(usize),
    BadName(String),
    BadUnit {
        name: String,
        unit: String,
    },
    /// NaN or infinite: JSON has no such number.
    NotFinite(String),
}

impl fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TelemetryError::Json(e) => write!(f, "not a telemetry payload: {e}"),
            TelemetryError::NoReadings => write!(f, "no readings"),
            TelemetryError::TooManyReadings(n) => write!(f, "{n} readings, at most {MAX_READINGS} fit one message"),
            TelemetryError::BadName(n) => {
                write!(f, "reading name {n:?} is not [a-z][a-z0-9_]* of at most {MAX_NAME_CHARS} characters")
            }
            TelemetryError::BadUnit { name, unit } => {
                write!(f, "unit {unit:?} of {name} is longer than {MAX_UNIT_CHARS} characters")
            }
            TelemetryError::NotFinite(n) => write!(f, "reading {n} is not a finite number"),
        }
    }
}

/// `^[a-z][a-z0-9_]{0,31}$`.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= MAX_NAME_CHARS
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

impl Telemetry {
    /// Readings taken at `at` (unix ms), checked against the schema.
    pub fn new(at: u64, readings: Vec<Reading>) -> Result<Self, TelemetryError> {
        let t = Telemetry { at, readings };
        t.validate()?;
        Ok(t)
    }

    /// Check the constraints serde's types do not already enforce.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        match self.readings.len() {
            0 => return Err(TelemetryError::NoReadings),
            n if n > MAX_READINGS => return Err(TelemetryError::TooManyReadings(n)),
            _ => {}
        }
        for r in &self.readings {
            if !is_valid_name(&r.name) {
                return Err(TelemetryError::BadName(r.name.clone()));
            }
            if r.unit.chars().count() > MAX_UNIT_CHARS {
                return Err(TelemetryError::BadUnit { name: r.name.clone(), unit: r.unit.clone() });
            }
            if !r.value.is_finite() {
                return Err(TelemetryError::NotFinite(r.name.clone()));
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("Telemetry serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, TelemetryError> {
        let t: Telemetry = serde_json::from_slice(bytes).map_err(|e| TelemetryError::Json(e.to_string()))?;
        t.validate()?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::{INVALID_TELEMETRY_JSON, TELEMETRY_SCHEMA_JSON, VALID_TELEMETRY_JSON};
    use crate::testkit::schema_violations;
    use serde_json::Value;

    #[test]
    fn valid_fixture_round_trips_byte_for_byte() {
        let t = Telemetry::from_json(VALID_TELEMETRY_JSON.trim().as_bytes()).unwrap();
        assert_eq!(t.readings[0], Reading::new("temperature", 21.4, "Cel"));
        assert_eq!(std::str::from_utf8(&t.to_json()).unwrap(), VALID_TELEMETRY_JSON.trim());
    }

    #[test]
    fn invalid_fixture_the_old_flat_format_is_refused() {
        assert!(matches!(Telemetry::from_json(INVALID_TELEMETRY_JSON.as_bytes()), Err(TelemetryError::Json(_))));
    }

    #[test]
    fn a_payload_validates_against_the_schema_with_every_limit_at_its_edge() {
        let schema: Value = serde_json::from_str(TELEMETRY_SCHEMA_JSON).unwrap();
        let name: String = std::iter::once('a').chain("_9z".chars().cycle().take(MAX_NAME_CHARS - 1)).collect();
        assert_eq!(name.len(), MAX_NAME_CHARS);
        let readings =
            (0..MAX_READINGS).map(|i| Reading::new(name.clone(), -1.5e-3 * i as f64, "%".repeat(16))).collect();
        let t = Telemetry::new(u64::from(u32::MAX) * 1000, readings).unwrap();
        let v: Value = serde_json::from_slice(&t.to_json()).unwrap();
        assert_eq!(schema_violations(&schema, &v), Vec::<String>::new());
        // The validator does notice what the schema refuses.
        let old: Value = serde_json::from_str(INVALID_TELEMETRY_JSON).unwrap();
        assert!(!schema_violations(&schema, &old).is_empty());
    }

    #[test]
    fn refuses_what_the_schema_refuses() {
        let ok = || Reading::new("temperature", 21.0, "Cel");
        assert_eq!(Telemetry::new(1, vec![]), Err(TelemetryError::NoReadings));
        assert_eq!(Telemetry::new(1, vec![ok(); MAX_READINGS + 1]), Err(TelemetryError::TooManyReadings(33)));
        for bad in ["", "Temperature", "1st", "temp-c", "é", &"a".repeat(MAX_NAME_CHARS + 1)] {
            let r = Telemetry::new(1, vec![ok(), Reading::new(bad, 1.0, "")]);
            assert_eq!(r, Err(TelemetryError::BadName(bad.into())), "{bad:?}");
        }
        assert!(is_valid_name(&"a".repeat(MAX_NAME_CHARS)));
        let long_unit = Telemetry::new(1, vec![Reading::new("p", 1.0, "x".repeat(17))]);
        assert!(matches!(long_unit, Err(TelemetryError::BadUnit { .. })));
        assert!(Telemetry::new(1, vec![Reading::new("p", 1.0, "µ".repeat(16))]).is_ok(), "characters, not bytes");
        for v in [f64::NAN, f64::INFINITY] {
            assert_eq!(Telemetry::new(1, vec![Reading::new("p", v, "")]), Err(TelemetryError::NotFinite("p".into())));
        }
        let e = Telemetry::new(1, vec![Reading::new("Bad", 1.0, "")]).unwrap_err().to_string();
        assert!(e.contains("\"Bad\""), "{e}");
    }
}
