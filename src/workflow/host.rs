//! The QuickJS side of an activation: the runtime with its limits, loading a script in either
//! form, and the `__host` object the prelude builds the workflow globals on.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rquickjs::{CatchResultExt, Ctx, Exception, Function, Module, Object, Runtime, Value};
use serde_json::{Value as Json, json};

use super::engine::{Activation, Request, Sandbox, StepKind, step_key};

const PRELUDE: &str = include_str!("prelude.js");

/// What the host functions collect during an activation.
#[derive(Default)]
pub(super) struct State {
    pub requests: Vec<Request>,
    pub events: Vec<(String, Json)>,
    pub spent: i64,
    pub fatal: Option<String>,
}

/// A fresh runtime with the sandbox's limits; the flag is set when the CPU deadline fired.
pub(super) fn runtime(sandbox: Sandbox) -> Result<(Runtime, Arc<AtomicBool>), String> {
    let rt = Runtime::new().map_err(|e| format!("starting QuickJS: {e}"))?;
    rt.set_memory_limit(sandbox.memory_bytes);
    rt.set_max_stack_size(1024 * 1024);
    let deadline = Instant::now() + sandbox.cpu;
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    rt.set_interrupt_handler(Some(Box::new(move || {
        let over = Instant::now() >= deadline;
        if over {
            flag.store(true, Ordering::Relaxed);
        }
        over
    })));
    Ok((rt, interrupted))
}

/// Text of a thrown value.
pub(super) fn thrown<'js>(ctx: &Ctx<'js>, v: Value<'js>) -> String {
    if let Some(e) = v.as_exception() {
        return e.message().unwrap_or_else(|| "error".into());
    }
    match ctx.json_stringify(v) {
        Ok(Some(s)) => s.to_string().unwrap_or_default(),
        _ => "error".into(),
    }
}

/// Text of an error, with the thrown value when it is an exception.
pub(super) fn caught(ctx: &Ctx<'_>, e: rquickjs::Error) -> String {
    match e {
        rquickjs::Error::Exception => thrown(ctx, ctx.catch()),
        other => other.to_string(),
    }
}

/// Loads the script and returns its module object: `{meta, default}` from either form.
pub(super) fn load<'js>(ctx: &Ctx<'js>, source: &str) -> Result<Object<'js>, String> {
    let is_module = source
        .lines()
        .any(|l| l.trim_start().starts_with("export ") || l.trim_start().starts_with("import "));
    if is_module {
        let declared =
            Module::declare(ctx.clone(), "workflow.js", source).map_err(|e| caught(ctx, e))?;
        let (module, promise) = declared.eval().map_err(|e| caught(ctx, e))?;
        promise
            .finish::<()>()
            .catch(ctx)
            .map_err(|e| e.to_string())?;
        let ns = module.namespace().map_err(|e| caught(ctx, e))?;
        let out = Object::new(ctx.clone()).map_err(|e| e.to_string())?;
        for name in ["meta", "default"] {
            let v: Value = ns.get(name).map_err(|e| caught(ctx, e))?;
            out.set(name, v).map_err(|e| e.to_string())?;
        }
        return Ok(out);
    }
    ctx.eval::<(), _>(source)
        .catch(ctx)
        .map_err(|e| e.to_string())?;
    // `module.exports = async function` or `module.exports = {meta, default | run}`.
    ctx.eval::<Object, _>(
        "(() => { const m = globalThis.module.exports; if (typeof m === 'function') \
         return { meta: m.meta, default: m }; return { meta: m && m.meta, \
         default: m && (m.default || m.run) }; })()",
    )
    .catch(ctx)
    .map_err(|e| e.to_string())
}

/// Defines `__host` and evaluates the prelude on it.
pub(super) fn install_host<'js>(
    ctx: &Ctx<'js>,
    a: &Activation,
    state: &Rc<RefCell<State>>,
) -> rquickjs::Result<()> {
    let host = Object::new(ctx.clone())?;
    host.set("seed", a.seed)?;
    host.set("now", a.now_ms as f64)?;
    host.set("args", a.args.to_string())?;
    host.set("budget", a.budget_total as f64)?;
    let st = Rc::clone(state);
    host.set(
        "event",
        Function::new(ctx.clone(), move |kind: String, data: String| {
            let data = serde_json::from_str(&data).unwrap_or(Json::Null);
            st.borrow_mut().events.push((kind, data));
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "spent",
        Function::new(ctx.clone(), move || st.borrow().spent as f64)?,
    )?;
    let st = Rc::clone(state);
    let known = a.known.clone();
    let journal = a.journal.clone();
    let (total, may_nest) = (a.budget_total, a.may_nest);
    host.set(
        "step",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  kind: String,
                  position: String,
                  inputs: String,
                  display: String|
                  -> rquickjs::Result<String> {
                let fail = |st: &Rc<RefCell<State>>, msg: String| {
                    let e = Exception::throw_message(&ctx, &msg);
                    st.borrow_mut().fatal.get_or_insert(msg);
                    e
                };
                let kind = StepKind::parse(&kind)
                    .ok_or_else(|| fail(&st, format!("unknown step kind {kind}")))?;
                let inputs: Json = serde_json::from_str(&inputs).unwrap_or(Json::Null);
                let display: Json = serde_json::from_str(&display).unwrap_or(Json::Null);
                let key = step_key(kind, &position, &inputs);
                if let Some(recorded) = journal.get(&position)
                    && *recorded != key
                {
                    return Err(fail(
                        &st,
                        format!(
                            "non-deterministic workflow: at position {position} this run recorded step {recorded}, but the replay reached step {key}"
                        ),
                    ));
                }
                if kind == StepKind::Workflow && !may_nest {
                    return Err(fail(
                        &st,
                        "workflow(): workflows nest one level deep, and this run is already nested"
                            .into(),
                    ));
                }
                if let Some(k) = known.get(&key) {
                    let mut s = st.borrow_mut();
                    s.spent += k.tokens;
                    if s.spent > total {
                        let msg = format!("budget exhausted ({}/{total})", s.spent);
                        drop(s);
                        return Err(fail(&st, msg));
                    }
                    return Ok(json!({ "status": "done", "value": k.value }).to_string());
                }
                let spent = st.borrow().spent;
                if kind != StepKind::Sleep && spent >= total {
                    return Err(fail(&st, format!("budget exhausted ({spent}/{total})")));
                }
                let mut s = st.borrow_mut();
                if !s.requests.iter().any(|r| r.position == position) {
                    s.requests.push(Request {
                        position,
                        key,
                        kind,
                        inputs,
                        label: display["label"].as_str().map(str::to_owned),
                        phase: display["phase"].as_str().map(str::to_owned),
                    });
                }
                Ok(r#"{"status":"pending"}"#.to_owned())
            },
        )?,
    )?;
    ctx.globals().set("__host", host)?;
    ctx.eval::<(), _>(PRELUDE)
}
