// The console hook: in the main world of every document, before page scripts, it replaces
// console.log/info/warn/error/debug and sends each call through the binding named `binding` as
// [level, time_ms, [texts], [stack]?], batched (see shmring/cdp/scripts.py for the rules).
// One function expression: scripts.py calls it with its settings:
//   withStack: a stack per call (detail level verbose); maxText: the longest text sent per
//   argument; maxBatch: the most calls in one payload.
({binding, withStack, maxText: MAX_TEXT, maxBatch: MAX_BATCH}) => {
  // Everything the hook uses is taken now, before page code can replace it,
  // and a hooked call never throws into the page.
  const G = globalThis, O = Object, A = Array, S = String;
  // A document made while console capture is off (no binding) keeps its native console. The producer
  // removes the binding to stop the calls (they then go nowhere) and adds it back to resume them.
  const emit = G[binding];
  if (typeof emit !== "function" || G.__shmringConsoleHooked) return;
  // Not enumerable; truthy (installed), and called with a boolean it turns stacks on or off (detail level).
  O.defineProperty(G, "__shmringConsoleHooked", {value: (on) => { withStack = on === true; }});
  try { delete G[binding]; } catch (e) {}
  const stringify = JSON.stringify, keysOf = O.keys, describeKey = O.getOwnPropertyDescriptor;
  const isArray = A.isArray, isView = ArrayBuffer.isView, brand = O.prototype.toString;
  const call = Function.prototype.call.bind(Function.prototype.call);
  const later = G.queueMicrotask.bind(G), perf = G.performance, perfNow = perf.now.bind(perf);
  const origin = perf.timeOrigin, ErrorCtor = G.Error, MapCtor = G.Map, SetCtor = G.Set;
  const getter = (proto, name) => { const d = proto && describeKey(proto, name); return d && d.get; };
  const E = G.Element && G.Element.prototype, N = G.Node && G.Node.prototype;
  const nodeTypeOf = getter(N, "nodeType"), nodeNameOf = getter(N, "nodeName");
  const localNameOf = getter(E, "localName"), idOf = getter(E, "id"), classNameOf = getter(E, "className");
  const cap = (t) => (t.length > MAX_TEXT ? t.slice(0, MAX_TEXT) : t);
  const isNode = (v) => { try { return nodeTypeOf !== undefined && typeof call(nodeTypeOf, v) === "number"; }
                          catch (e) { return false; } };
  const nodeText = (v) => {
    if (call(nodeTypeOf, v) !== 1) return S(call(nodeNameOf, v));
    const id = call(idOf, v), cls = S(call(classNameOf, v) || "").trim();
    return call(localNameOf, v) + (id ? "#" + id : "") + (cls ? "." + cls.split(/\s+/).join(".") : "");
  };
  // Text previews close to what the DevTools console shows; accessors are
  // never called (as DevTools doesn't), so previewing has no side effects.
  const inner = (v) => {
    if (typeof v === "string") return "'" + v + "'";
    if (v === null) return "null";
    if (typeof v === "function") return "ƒ";
    if (typeof v === "bigint") return v + "n";
    if (typeof v !== "object") return S(v);
    if (isArray(v)) return "Array(" + v.length + ")";
    const b = call(brand, v);
    return b.slice(8, -1);
  };
  const text = (v) => {
    if (typeof v === "string") return cap(v);
    if (v === null) return "null";
    if (typeof v === "bigint") return v + "n";
    if (typeof v === "symbol") return S(v);
    if (typeof v !== "object") return cap(S(v));
    try {
      const b = call(brand, v);
      if (b === "[object Error]") return cap(S(v.stack || v));
      if (b === "[object RegExp]" || b === "[object Date]") return cap(S(v));
      if (b === "[object String]") return cap("String {'" + v.valueOf() + "'}");
      if (v instanceof MapCtor || v instanceof SetCtor) return (v instanceof MapCtor ? "Map(" : "Set(") + v.size + ")";
      if (isNode(v)) return cap(nodeText(v));
      if (isArray(v) || isView(v)) {
        let out = "[", n = v.length, i = 0;
        for (; i < n && i < 100; i++) {
          if (i) out += ", ";
          const d = describeKey(v, i);
          out += d === undefined ? "" : ("get" in d ? "accessor" : inner(d.value));
        }
        return cap(out + (n > 100 ? ", …]" : "]"));
      }
      const keys = keysOf(v);
      let out = "{", i = 0;
      for (; i < keys.length && i < 5; i++) {
        let part;
        try { const d = describeKey(v, keys[i]); part = d && "get" in d ? "accessor" : inner(d && d.value); }
        catch (e) { part = "?"; }
        out += (i ? ", " : "") + keys[i] + ": " + part;
      }
      return cap(out + (keys.length > 5 ? ", …}" : "}"));
    } catch (e) {
      return "?";
    }
  };
  const stackHere = () => {
    const limit = ErrorCtor.stackTraceLimit, prepare = ErrorCtor.prepareStackTrace;
    try {
      ErrorCtor.stackTraceLimit = 203;  // this function, record() and the hooked method, then the caller's 200
      ErrorCtor.prepareStackTrace = undefined;
      const lines = S(new ErrorCtor().stack || "").split("\n"), out = [];
      for (let i = 4; i < lines.length; i++) {
        const line = lines[i].trim().replace(/^at /, "");
        out.push(line.endsWith(")") ? line : "(anonymous) (" + line + ")");
      }
      return out;
    } finally {
      ErrorCtor.stackTraceLimit = limit;
      ErrorCtor.prepareStackTrace = prepare;
    }
  };
  // JSON by hand: only strings go through stringify, which never consults a
  // page's toJSON for a primitive.
  const strings = (list) => {
    let out = "[";
    for (let i = 0; i < list.length; i++) out += (i ? "," : "") + stringify(list[i]);
    return out + "]";
  };
  // A call goes out at once (synchronously) unless one went out less than
  // 1 ms before: then it waits for the end of the task, or for 1 ms more of
  // calls, or for a warn or error. So a page that hangs, blocks in an alert
  // or crashes loses at most its last millisecond of log/info/debug calls,
  // and a burst of thousands of calls costs a few dozen binding calls (each
  // costs the page about what a native console call does).
  let batch = "", count = 0, scheduled = false, sentAt = -1e9;
  const send = () => {
    scheduled = false;
    if (!count) return;
    const out = "[" + batch + "]";
    batch = "";
    count = 0;
    try { emit(out); } catch (e) {}
  };
  const record = (level, args) => {
    try {
      const texts = [];
      for (let i = 0; i < args.length; i++) texts.push(text(args[i]));
      const now = perfNow(), time = origin + now;
      batch += (count ? "," : "") + '["' + level + '",' + (time === time ? time : 0) + "," + strings(texts) +
               (withStack ? "," + strings(stackHere()) : "") + "]";
      count++;
      if (level === "warn" || level === "error" || count >= MAX_BATCH || now - sentAt >= 1) {
        sentAt = now;
        send();
      } else if (!scheduled) {
        scheduled = true;
        later(send);
      }
    } catch (e) {}
  };
  const hooks = {
    log(...args) { record("log", args); }, info(...args) { record("info", args); },
    warn(...args) { record("warn", args); }, error(...args) { record("error", args); },
    debug(...args) { record("debug", args); },
  };
  for (const level of ["log", "info", "warn", "error", "debug"]) {
    try { O.defineProperty(console, level, {value: hooks[level], writable: true, configurable: true}); } catch (e) {}
  }
}
