//! Structured-ish log lines on stderr: `ts=… level=… device=… event=… key=value…`.
//!
//! One line per event, keys stable, so a fleet run can be grepped by `device=` or
//! `cid=` the same way the Node and Python services' JSON logs are. Values containing
//! spaces, quotes or `=` are quoted. Secrets never reach here: they are held in
//! [`fleetwire_core::secret::Secret`], which has no `Display`.

use std::fmt::{self, Display, Write as _};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warn" => Some(Level::Warn),
            "error" => Some(Level::Error),
            _ => None,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

static MIN_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: Level) {
    MIN_LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 >= MIN_LEVEL.load(Ordering::Relaxed)
}

/// Write `value` bare when it is a simple token, quoted (Rust string escaping) otherwise.
fn push_value(line: &mut String, value: &dyn Display) {
    let s = value.to_string();
    if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '"' || c == '=' || c.is_control()) {
        let _ = write!(line, "{s:?}");
    } else {
        line.push_str(&s);
    }
}

/// Format one line (without the trailing newline); separate from [`emit`] for tests.
pub fn format_line(level: Level, device: &str, event: &str, fields: &[(&str, &dyn Display)]) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut line = format!("ts={}.{:03} level={} device=", now.as_secs(), now.subsec_millis(), level.as_str());
    push_value(&mut line, &device);
    line.push_str(" event=");
    push_value(&mut line, &event);
    for (k, v) in fields {
        line.push(' ');
        line.push_str(k);
        line.push('=');
        push_value(&mut line, *v);
    }
    line
}

pub fn emit(level: Level, device: &str, event: &str, fields: &[(&str, &dyn Display)]) {
    if enabled(level) {
        eprintln!("{}", format_line(level, device, event, fields));
    }
}

/// `sim_log!(Level::Info, device_id, "connected", session_present = sp, cid = c)`.
#[macro_export]
macro_rules! sim_log {
    ($level:expr, $device:expr, $event:expr $(, $key:ident = $value:expr)* $(,)?) => {
        if $crate::log::enabled($level) {
            $crate::log::emit($level, $device, $event, &[$((stringify!($key), &$value as &dyn ::std::fmt::Display)),*]);
        }
    };
}

/// Display adapter for optional values (`-` when absent).
pub struct Opt<T>(pub Option<T>);

impl<T: Display> Display for Opt<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_values_are_bare_and_others_quoted() {
        let cid = "c-1";
        let reason = "token expires soon";
        let line = format_line(Level::Info, "esp-01", "cmd", &[("cid", &cid), ("reason", &reason), ("n", &3)]);
        assert!(
            line.contains(" level=info device=esp-01 event=cmd cid=c-1 reason=\"token expires soon\" n=3"),
            "{line}"
        );
        assert!(line.starts_with("ts="));
    }

    #[test]
    fn optional_values_print_a_dash_when_absent() {
        assert_eq!(Opt(None::<u16>).to_string(), "-");
        assert_eq!(Opt(Some(4002)).to_string(), "4002");
    }

    #[test]
    fn level_names_parse() {
        assert_eq!(Level::parse("warn"), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
        assert!(Level::Error > Level::Info);
    }
}
