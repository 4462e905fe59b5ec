//! One activation of a workflow script in a fresh QuickJS runtime: load the script, call its
//! default export, hand out every known step result, and report where it got to (finished,
//! failed, or blocked on steps without results). Pure: no I/O, no clock; it runs on a blocking
//! thread and the caller does the database work.
//!
//! The engine enforces the sandbox: a memory limit, a CPU deadline through the interrupt
//! handler, no module loader (so no `import`), and no host objects besides the workflow globals.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rquickjs::{CatchResultExt, Context, Function, Value};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::host::{State, caught, install_host, load, runtime};

/// Resource limits of one activation.
#[derive(Debug, Clone, Copy)]
pub struct Sandbox {
    pub memory_bytes: usize,
    pub cpu: Duration,
}

/// What a step call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Agent,
    Workflow,
    Sleep,
}

impl StepKind {
    /// The name stored in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Workflow => "workflow",
            Self::Sleep => "sleep",
        }
    }

    /// The kind stored under `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "agent" => Some(Self::Agent),
            "workflow" => Some(Self::Workflow),
            "sleep" => Some(Self::Sleep),
            _ => None,
        }
    }
}

/// A known step result as the script sees it, and whether it counts against the budget.
#[derive(Debug, Clone)]
pub struct Known {
    pub value: Json,
    /// Tokens it cost this run (0 when it came from the cache).
    pub tokens: i64,
}

/// The inputs of one activation.
pub struct Activation {
    pub source: String,
    pub args: Json,
    pub seed: u32,
    pub now_ms: i64,
    pub budget_total: i64,
    /// Results by step key.
    pub known: HashMap<String, Known>,
    /// The key recorded at each position so far (a replay must reach the same one).
    pub journal: HashMap<String, String>,
    /// Whether `workflow()` may start a nested run (only from a top-level run).
    pub may_nest: bool,
    pub sandbox: Sandbox,
}

/// A step the script reached that has no result yet.
#[derive(Debug, Clone)]
pub struct Request {
    pub position: String,
    pub key: String,
    pub kind: StepKind,
    pub inputs: Json,
    pub label: Option<String>,
    pub phase: Option<String>,
}

/// How an activation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The default export resolved with this value.
    Done(Json),
    /// The run must fail with this message.
    Failed(String),
    /// It waits for the requested steps.
    Blocked,
}

/// Everything an activation produced.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    pub requests: Vec<Request>,
    /// `log` and `phase` events, in the order the script made them.
    pub events: Vec<(String, Json)>,
    pub spent: i64,
}

/// A workflow's metadata, read without running its default export.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Meta {
    pub name: Option<String>,
    pub description: String,
    pub phases: Vec<String>,
}

/// The step key: a hash of the kind, the position and the canonical inputs.
pub fn step_key(kind: StepKind, position: &str, inputs: &Json) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update(b"\0");
    h.update(position.as_bytes());
    h.update(b"\0");
    h.update(canonical(inputs).to_string().as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// `v` with every object's keys sorted, whatever order the script built them in.
fn canonical(v: &Json) -> Json {
    match v {
        Json::Object(m) => {
            let sorted: BTreeMap<&String, Json> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            Json::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Json::Array(a) => Json::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}
/// Runs one activation to the point where it finishes, fails or can make no more progress.
pub fn activate(a: Activation) -> Report {
    let state = Rc::new(RefCell::new(State::default()));
    let outcome = match run_script(&a, &state) {
        Ok(o) => o,
        Err(msg) => Outcome::Failed(msg),
    };
    let s = state.borrow();
    let outcome = match &s.fatal {
        Some(msg) => Outcome::Failed(msg.clone()),
        None => outcome,
    };
    Report {
        outcome,
        requests: s.requests.clone(),
        events: s.events.clone(),
        spent: s.spent,
    }
}

fn run_script(a: &Activation, state: &Rc<RefCell<State>>) -> Result<Outcome, String> {
    let (rt, interrupted) = runtime(a.sandbox)?;
    let ctx = Context::full(&rt).map_err(|e| format!("starting QuickJS: {e}"))?;
    let limit_msg = |msg: String| -> String {
        if interrupted.load(Ordering::Relaxed) {
            format!(
                "CPU limit: the script ran for more than {} ms in one activation",
                a.sandbox.cpu.as_millis()
            )
        } else if msg.contains("out of memory") {
            format!(
                "memory limit: the script used more than {} MiB",
                a.sandbox.memory_bytes / (1024 * 1024)
            )
        } else {
            msg
        }
    };
    ctx.with(|ctx| {
        install_host(&ctx, a, state)
            .map_err(|e| format!("installing the globals: {}", caught(&ctx, e)))?;
        let module = load(&ctx, &a.source).map_err(limit_msg)?;
        let main: Value = module.get("default").map_err(|e| caught(&ctx, e))?;
        let Some(main) = main.as_function().cloned() else {
            return Err("the script has no default export function".to_owned());
        };
        let start: Function = ctx.globals().get("__start").map_err(|e| caught(&ctx, e))?;
        let tick: Function = ctx.globals().get("__tick").map_err(|e| caught(&ctx, e))?;
        let args = ctx
            .json_parse(a.args.to_string())
            .map_err(|e| caught(&ctx, e))?;
        let promise: rquickjs::Promise = start
            .call((main, args))
            .catch(&ctx)
            .map_err(|e| limit_msg(e.to_string()))?;
        loop {
            while ctx.execute_pending_job() {}
            if state.borrow().fatal.is_some() || interrupted.load(Ordering::Relaxed) {
                break;
            }
            if promise.state() != rquickjs::promise::PromiseState::Pending {
                break;
            }
            let more: bool = tick
                .call(())
                .catch(&ctx)
                .map_err(|e| limit_msg(e.to_string()))?;
            if !more {
                break;
            }
        }
        if interrupted.load(Ordering::Relaxed) {
            return Err(limit_msg(String::new()));
        }
        match promise.result::<Value>() {
            None if state.borrow().requests.is_empty() && state.borrow().fatal.is_none() => Err(
                "the workflow cannot finish: it waits for something that is not a step".to_owned(),
            ),
            None => Ok(Outcome::Blocked),
            Some(Ok(v)) => {
                let text = ctx
                    .json_stringify(v)
                    .map_err(|e| caught(&ctx, e))?
                    .and_then(|s| s.to_string().ok());
                Ok(Outcome::Done(
                    text.and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or(Json::Null),
                ))
            }
            Some(Err(e)) => Err(limit_msg(caught(&ctx, e))),
        }
    })
}

/// Reads a script's metadata by loading it (top-level code only; the default export is not
/// called), under the given sandbox.
pub fn inspect(source: &str, sandbox: Sandbox) -> Result<Meta, String> {
    let (rt, interrupted) = runtime(sandbox)?;
    let ctx = Context::full(&rt).map_err(|e| format!("starting QuickJS: {e}"))?;
    let state = Rc::new(RefCell::new(State::default()));
    let a = Activation {
        source: String::new(),
        args: Json::Null,
        seed: 0,
        now_ms: 0,
        budget_total: 0,
        known: HashMap::new(),
        journal: HashMap::new(),
        may_nest: false,
        sandbox,
    };
    let r = ctx.with(|ctx| {
        install_host(&ctx, &a, &state).map_err(|e| caught(&ctx, e))?;
        let module = load(&ctx, source)?;
        let main: Value = module.get("default").map_err(|e| caught(&ctx, e))?;
        if !main.is_function() {
            return Err("the script has no default export function".to_owned());
        }
        let meta: Value = module.get("meta").map_err(|e| caught(&ctx, e))?;
        let text = ctx
            .json_stringify(meta)
            .map_err(|e| caught(&ctx, e))?
            .and_then(|s| s.to_string().ok())
            .unwrap_or_else(|| "null".into());
        let meta: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
        let description = meta["description"]
            .as_str()
            .ok_or("meta.description must be a string")?;
        let phases = match &meta["phases"] {
            Json::Null => Vec::new(),
            Json::Array(p) => p
                .iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or("meta.phases must be an array of strings")?,
            _ => return Err("meta.phases must be an array of strings".to_owned()),
        };
        Ok(Meta {
            name: meta["name"].as_str().map(str::to_owned),
            description: description.to_owned(),
            phases,
        })
    });
    if interrupted.load(Ordering::Relaxed) {
        return Err("CPU limit: loading the script took too long".to_owned());
    }
    r
}
