// The workflow globals, evaluated in every fresh QuickJS context before the user's script.
// `__host` is the Rust side of one activation (see engine.rs); everything else a script can
// reach is defined here. Steps are keyed by their position: the branch path (parallel and
// pipeline branches included) plus a sequence number within the branch, so a replay finds the
// same key for the same call whatever order other branches' results arrive in.
(function (host) {
  "use strict";
  // Seeded per run: a replay draws the same numbers.
  let seed = host.seed >>> 0;
  Math.random = function () {
    seed = (seed + 0x6d2b79f5) >>> 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  // Fixed for the activation.
  const RealDate = Date;
  const now = host.now;
  function FixedDate(...a) {
    if (!new.target) return new RealDate(now).toString();
    return a.length ? new RealDate(...a) : new RealDate(now);
  }
  FixedDate.prototype = RealDate.prototype;
  FixedDate.now = () => now;
  FixedDate.UTC = RealDate.UTC;
  FixedDate.parse = RealDate.parse;
  globalThis.Date = FixedDate;

  function Branch(path) {
    this.path = path;
    this.seq = 0;
    this.forks = 0;
  }
  const root = new Branch("r");
  let cur = root;
  let phaseTitle = null;
  // Steps whose results are known, delivered one at a time by `__tick` in call order.
  const ready = [];

  function step(kind, inputs, display) {
    const b = cur;
    const position = b.path + "#" + b.seq++;
    const answer = JSON.parse(
      host.step(kind, position, JSON.stringify(inputs), JSON.stringify(display))
    );
    return new Promise((resolve) => {
      // A pending step never resolves in this activation: the run suspends until it finishes.
      if (answer.status === "done") ready.push({ branch: b, value: answer.value, resolve });
    }).then((v) => {
      cur = b;
      return v;
    });
  }

  globalThis.__tick = function () {
    const next = ready.shift();
    if (!next) return false;
    cur = next.branch;
    next.resolve(next.value);
    return true;
  };

  globalThis.__start = function (main, args) {
    cur = root;
    return Promise.resolve().then(() => {
      cur = root;
      return main(args);
    });
  };

  function stripFences(text) {
    const m = /^\s*```[a-zA-Z]*\s*\n([\s\S]*?)\n\s*```\s*$/.exec(text);
    return m ? m[1] : text;
  }

  // A small JSON Schema subset: type, properties, required, items, enum.
  function validate(value, schema, path) {
    if (!schema || typeof schema !== "object") return null;
    const t = schema.type;
    const kind = Array.isArray(value) ? "array" : value === null ? "null" : typeof value;
    if (t) {
      const ok =
        t === kind ||
        (t === "integer" && kind === "number" && Number.isInteger(value)) ||
        (Array.isArray(t) && t.includes(kind));
      if (!ok) return `${path}: expected ${JSON.stringify(t)}, got ${kind}`;
    }
    if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value)))
      return `${path}: not one of ${JSON.stringify(schema.enum)}`;
    if (kind === "object") {
      for (const r of schema.required || [])
        if (!(r in value)) return `${path}: missing required property ${r}`;
      for (const [k, s] of Object.entries(schema.properties || {}))
        if (k in value) {
          const e = validate(value[k], s, `${path}.${k}`);
          if (e) return e;
        }
    }
    if (kind === "array" && schema.items)
      for (let i = 0; i < value.length; i++) {
        const e = validate(value[i], schema.items, `${path}[${i}]`);
        if (e) return e;
      }
    return null;
  }

  function withSchema(result, schema) {
    if (!schema || !result.ok) return result;
    let parsed;
    try {
      parsed = JSON.parse(stripFences(String(result.output)));
    } catch (e) {
      return { ...result, ok: false, error: `output is not JSON: ${e.message}` };
    }
    const err = validate(parsed, schema, "$");
    if (err) return { ...result, ok: false, error: `output does not match the schema: ${err}` };
    return { ...result, output: parsed };
  }

  globalThis.agent = function (prompt, opts) {
    opts = opts || {};
    if (typeof prompt !== "string") throw new TypeError("agent(prompt): prompt must be a string");
    const inputs = {
      prompt,
      model: opts.model ?? null,
      tools: opts.tools ?? null,
      schema: opts.schema ?? null,
      max_tool_calls: opts.max_tool_calls ?? null,
    };
    const display = { label: opts.label ?? null, phase: opts.phase ?? phaseTitle };
    return step("agent", inputs, display).then((r) => withSchema(r, opts.schema));
  };

  globalThis.workflow = function (name, args) {
    if (typeof name !== "string") throw new TypeError("workflow(name): name must be a string");
    return step("workflow", { name, args: args ?? null }, { label: name, phase: phaseTitle });
  };

  globalThis.sleep = function (ms) {
    const n = Math.max(0, Math.floor(Number(ms) || 0));
    return step("sleep", { ms: n }, { label: `sleep ${n} ms`, phase: phaseTitle }).then(
      () => undefined
    );
  };

  // Runs `fns` with at most `limit` at once, each in its own branch; settled semantics.
  function fanOut(tag, fns, limit) {
    const parent = cur;
    const fork = parent.forks++;
    const results = new Array(fns.length);
    let next = 0;
    let running = 0;
    let done = 0;
    return new Promise((resolveAll) => {
      if (fns.length === 0) return resolveAll(results);
      const launch = () => {
        while (running < limit && next < fns.length) {
          const i = next++;
          running++;
          const saved = cur;
          cur = new Branch(`${parent.path}/${tag}${fork}.${i}`);
          let p;
          try {
            p = Promise.resolve(fns[i]());
          } catch (e) {
            p = Promise.reject(e);
          } finally {
            cur = saved;
          }
          p.then(
            (v) => v,
            (e) => ({ ok: false, error: String((e && e.message) || e) })
          ).then((v) => {
            results[i] = v;
            running--;
            done++;
            if (done === fns.length) {
              cur = parent;
              resolveAll(results);
            } else launch();
          });
        }
      };
      launch();
    }).then((v) => {
      cur = parent;
      return v;
    });
  }

  function limitOf(opts) {
    const c = opts && opts.concurrency;
    return Number.isInteger(c) && c > 0 ? c : 3;
  }

  globalThis.parallel = function (thunks, opts) {
    if (!Array.isArray(thunks) || thunks.some((t) => typeof t !== "function"))
      throw new TypeError("parallel(thunks): thunks must be an array of functions");
    return fanOut("p", thunks, limitOf(opts));
  };

  globalThis.pipeline = function (items, ...stages) {
    if (!Array.isArray(items)) throw new TypeError("pipeline(items, ...stages): items must be an array");
    if (stages.some((s) => typeof s !== "function"))
      throw new TypeError("pipeline(items, ...stages): stages must be functions");
    const fns = items.map((item, i) => async () => {
      const me = cur;
      let v = item;
      for (const stage of stages) {
        cur = me;
        v = await stage(v, i);
        cur = me;
      }
      return v;
    });
    return fanOut("l", fns, 3);
  };

  globalThis.phase = function (title) {
    phaseTitle = String(title);
    host.event("phase", JSON.stringify({ title: phaseTitle }));
  };

  globalThis.log = function (...parts) {
    const message = parts
      .map((p) => (typeof p === "string" ? p : JSON.stringify(p)))
      .join(" ");
    host.event("log", JSON.stringify({ message, phase: phaseTitle }));
  };

  globalThis.args = JSON.parse(host.args);
  const total = host.budget;
  globalThis.budget = Object.freeze({
    total,
    spent: () => host.spent(),
    remaining: () => Math.max(0, total - host.spent()),
  });
  // CommonJS form.
  globalThis.module = { exports: {} };
  globalThis.exports = globalThis.module.exports;
})(globalThis.__host);
delete globalThis.__host;
