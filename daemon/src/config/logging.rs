//! `[logging]`: log line format and filter.

use serde::Deserialize;

use super::{Invalid, invalid};

/// `[logging]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub level: Option<String>,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `airlock_daemon=debug,info`.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl TryFrom<RawLogging> for LoggingConfig {
    type Error = Invalid;

    fn try_from(raw: RawLogging) -> Result<Self, Invalid> {
        let format = match raw.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "logging.format",
                    format!("`{other}` is not one of \"text\", \"json\""),
                ));
            }
        };
        let level = raw.level.unwrap_or_else(|| "info".into());
        if let Err(e) = level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(invalid(
                "logging.level",
                format!("`{level}` is not a valid filter: {e}"),
            ));
        }
        Ok(LoggingConfig { format, level })
    }
}
