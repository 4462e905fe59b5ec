//! The Prometheus text exposition format (version 0.0.4), written by hand: a `# HELP` and
//! `# TYPE` line per family, then its samples, label values escaped.

use std::fmt::Write;

use super::{OutcomeLabel, Snapshot};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An exposition being written.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// A metric family's type.
#[derive(Debug, Clone, Copy)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its help text and type. Samples of it follow.
    pub fn family(&mut self, name: &str, ty: Type, help: &str) {
        let ty = match ty {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {ty}");
    }

    /// One integer sample.
    pub fn int(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.series(name, labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// One float sample.
    pub fn float(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.series(name, labels, None);
        self.out.push(' ');
        self.value(value);
        self.out.push('\n');
    }

    /// One histogram's `_bucket`, `_sum` and `_count` series.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Snapshot) {
        let bucket = format!("{name}_bucket");
        for (le, n) in &h.buckets {
            let mut le_text = String::new();
            let _ = write!(le_text, "{le}");
            self.series(&bucket, labels, Some(&le_text));
            let _ = writeln!(self.out, " {n}");
        }
        self.series(&bucket, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {}", h.count);
        self.float(&format!("{name}_sum"), labels, h.sum);
        self.int(&format!("{name}_count"), labels, h.count);
    }

    /// The text so far.
    pub fn finish(self) -> String {
        self.out
    }

    fn series(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>) {
        self.out.push_str(name);
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let le = le.map(|v| ("le", v));
        for (i, (k, v)) in labels.iter().copied().chain(le).enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    fn value(&mut self, v: f64) {
        if v.is_nan() {
            self.out.push_str("NaN");
        } else if v.is_infinite() {
            self.out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(self.out, "{v}");
        }
    }
}

/// Writes every process-local family: job counters and timings, and LLM usage.
pub fn process(e: &mut Exposition) {
    let c = super::counters();
    e.family(
        "spool_job_attempts_total",
        Type::Counter,
        "Job attempts this process claimed.",
    );
    e.int("spool_job_attempts_total", &[], c.attempts);
    e.family(
        "spool_job_outcomes_total",
        Type::Counter,
        "Attempt outcomes this process wrote, by outcome (fenced-out writes not counted).",
    );
    for o in OutcomeLabel::ALL {
        e.int(
            "spool_job_outcomes_total",
            &[("outcome", o.as_str())],
            c.outcome(o),
        );
    }
    e.family(
        "spool_job_failures_total",
        Type::Counter,
        "Attempts this process ended with an error (retried or failed).",
    );
    e.int("spool_job_failures_total", &[], c.failures());
    e.family(
        "spool_job_rescues_total",
        Type::Counter,
        "Jobs with lapsed leases this process rescued (requeued, failed or cancelled).",
    );
    e.int("spool_job_rescues_total", &[], c.rescues);
    e.family(
        "spool_job_cancels_total",
        Type::Counter,
        "Cancels requested through this process that stopped a job or asked its worker to.",
    );
    e.int("spool_job_cancels_total", &[], c.cancels);

    let kinds = super::kinds();
    e.family(
        "spool_job_claim_latency_seconds",
        Type::Histogram,
        "Time from a job becoming ready to its claim by this process, by kind.",
    );
    for (kind, m) in &kinds {
        let s = m.claim_latency.snapshot();
        e.histogram("spool_job_claim_latency_seconds", &[("kind", kind)], &s);
    }
    e.family(
        "spool_job_duration_seconds",
        Type::Histogram,
        "Time one attempt ran in this process, from dispatch to its finish, by kind.",
    );
    for (kind, m) in &kinds {
        let s = m.duration.snapshot();
        e.histogram("spool_job_duration_seconds", &[("kind", kind)], &s);
    }

    let llm = super::llm();
    e.family(
        "spool_llm_calls_total",
        Type::Counter,
        "LLM calls made by this process, by model.",
    );
    for (model, t) in &llm {
        e.int("spool_llm_calls_total", &[("model", model)], t.calls);
    }
    e.family(
        "spool_llm_tokens_total",
        Type::Counter,
        "LLM tokens used by this process, by model and type (input, output, cache_read, cache_write, reasoning).",
    );
    for (model, t) in &llm {
        for (ty, n) in [
            ("input", t.input_tokens),
            ("output", t.output_tokens),
            ("cache_read", t.cache_read_tokens),
            ("cache_write", t.cache_write_tokens),
            ("reasoning", t.reasoning_tokens),
        ] {
            e.int(
                "spool_llm_tokens_total",
                &[("model", model), ("type", ty)],
                n,
            );
        }
    }
    e.family(
        "spool_llm_cost_usd_total",
        Type::Counter,
        "Cost in USD of this process's LLM calls at the configured prices, by model.",
    );
    for (model, t) in &llm {
        e.float("spool_llm_cost_usd_total", &[("model", model)], t.cost_usd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_histograms_complete() {
        let mut e = Exposition::new();
        e.family("x_total", Type::Counter, "Things.");
        e.int("x_total", &[("kind", "a\"b\\c\nd")], 3);
        e.histogram(
            "h_seconds",
            &[("kind", "k")],
            &Snapshot {
                buckets: vec![(0.5, 1), (1.0, 2)],
                count: 3,
                sum: 4.25,
            },
        );
        e.float("g", &[], f64::INFINITY);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{kind=\"a\\\"b\\\\c\\nd\"} 3\n\
             h_seconds_bucket{kind=\"k\",le=\"0.5\"} 1\n\
             h_seconds_bucket{kind=\"k\",le=\"1\"} 2\n\
             h_seconds_bucket{kind=\"k\",le=\"+Inf\"} 3\n\
             h_seconds_sum{kind=\"k\"} 4.25\n\
             h_seconds_count{kind=\"k\"} 3\n\
             g +Inf\n"
        );
    }
}
