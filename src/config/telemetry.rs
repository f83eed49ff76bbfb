//! `[log]` (the error log and the access log) and `[tracing]` (OpenTelemetry export).

use super::*;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_level")]
    pub level: LogLevel,
    /// `"stdout"`, a file path, or `"off"`.
    #[serde(default = "default_access_log")]
    pub access_log: String,
}

/// `[tracing]`: OpenTelemetry export of one span per request. Off without an endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/HTTP (protobuf) traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub otlp_endpoint: Option<Spanned<String>>,
    /// Share of new traces recorded; a client's `traceparent` sampled flag decides for its own.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: Spanned<f64>,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Longest wait for the collector per batch.
    #[serde(default = "default_export_timeout")]
    pub export_timeout: ConfTimeout,
    /// How often queued spans are sent.
    #[serde(default = "default_export_interval")]
    pub export_interval: ConfTimeout,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            sample_ratio: default_sample_ratio(),
            service_name: default_service_name(),
            export_timeout: default_export_timeout(),
            export_interval: default_export_interval(),
        }
    }
}

fn default_sample_ratio() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}

fn default_service_name() -> String {
    "pylon".into()
}

fn default_export_interval() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(1))
}

fn default_export_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(10))
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_level(),
            access_log: default_access_log(),
        }
    }
}

fn default_access_log() -> String {
    "off".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

fn default_level() -> LogLevel {
    LogLevel::Info
}
