//! Process logging on stderr: human-readable text, or JSON lines for log pipelines
//! (`log_format = "json"`, `SPOOL_LOG_FORMAT=json`). `RUST_LOG` sets the filter.
//!
//! A JSON line is one flat object: `timestamp`, `level`, `target`, `message`, the event's fields,
//! then the fields of every span the event is inside (outermost first, inner ones win). While a
//! job runs, the worker's `job` span puts `job_id`, `worker_id`, `kind`, `attempt` and `trace_id`
//! on every line, so a pipeline filters a job's lines by a top-level key rather than digging
//! through a nested span list.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=warn";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("`{other}` is not `text` or `json`")),
        }
    }
}

/// Installs the process's subscriber on stderr, filtered by `RUST_LOG` (else
/// [`DEFAULT_FILTER`]). Only the first call in a process takes effect.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // A second call (or a test harness's subscriber) already installed one: keep it.
    let _ = dispatch(format, filter, std::io::stderr).try_init();
}

/// A subscriber writing `format` to `writer`; tests capture lines through their own writer.
pub fn dispatch<W>(format: LogFormat, filter: EnvFilter, writer: W) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Dispatch::new(builder.finish()),
        LogFormat::Json => Dispatch::new(
            builder
                .fmt_fields(JsonFields::new())
                .event_format(FlatJson)
                .finish(),
        ),
    }
}

/// Formats each event as one flat JSON object; span fields come from [`JsonFields`], which
/// stores each span's fields as a JSON object.
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(stored) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(span_fields)) = serde_json::from_str(&stored.fields) {
                    fields.extend(span_fields);
                }
            }
        }
        event.record(&mut Collect(&mut fields));
        let meta = event.metadata();
        let mut target = Value::String(meta.target().to_owned());
        // Records bridged from the `log` crate carry their real target as a field.
        if let Some(t) = fields.remove("log.target") {
            target = t;
        }
        fields.retain(|k, _| !k.starts_with("log."));
        let message = fields.remove("message").unwrap_or(Value::Null);
        let head = [
            (
                "timestamp",
                Value::String(
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                ),
            ),
            ("level", Value::String(meta.level().to_string())),
            ("target", target),
            ("message", message),
        ];
        let mut line = String::with_capacity(256);
        line.push('{');
        for (i, (k, v)) in head.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            push_pair(&mut line, k, v)?;
        }
        for (k, v) in &fields {
            line.push(',');
            push_pair(&mut line, k, v)?;
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

fn push_pair(line: &mut String, key: &str, value: &Value) -> fmt::Result {
    line.push_str(&serde_json::to_string(key).map_err(|_| fmt::Error)?);
    line.push(':');
    line.push_str(&serde_json::to_string(value).map_err(|_| fmt::Error)?);
    Ok(())
}

/// Gathers an event's fields as JSON values; an event's own fields win over its spans'.
struct Collect<'a>(&'a mut Map<String, Value>);

impl Visit for Collect<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_are_flat_with_span_fields() {
        let buf = Buf::default();
        let out = buf.clone();
        let d = dispatch(LogFormat::Json, EnvFilter::new("info"), move || out.clone());
        tracing::dispatcher::with_default(&d, || {
            let outer = tracing::info_span!("job", job_id = "j1", trace_id = "");
            let _o = outer.enter();
            let inner = tracing::info_span!("call", job_id = "shadowed", step = 2);
            let _i = inner.enter();
            tracing::info!(n = 3, "hello \"there\"");
        });
        let text = String::from_utf8(buf.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        let line: Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["message"], "hello \"there\"");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["n"], 3);
        assert_eq!(line["job_id"], "shadowed", "inner spans win");
        assert_eq!(line["step"], 2);
        assert_eq!(line["trace_id"], "");
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(text.matches('\n').count(), 1);
    }

    #[test]
    fn formats_parse() {
        assert_eq!("JSON".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
