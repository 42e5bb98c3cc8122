// The interaction script: in the isolated world of every document, before page scripts, it reports
// clicks, keys and scrolls (targets as short selectors, never text or values) through the binding
// named `binding`. One function expression: shmring/cdp/scripts.py calls it with its settings.
// The binding is looked up at each report: the producer removes it while interaction capture is off
// (then nothing is sent) and adds it back when it is on again.
({binding}) => {
  if (globalThis.__shmringInstalled) return;
  globalThis.__shmringInstalled = true;
  const emit = (text) => { const f = globalThis[binding]; if (typeof f === "function") f(text); };
  const now = () => performance.timeOrigin + performance.now();
  const describe = (el) => {
    if (el === document || el === window) return "document";
    if (!el || el.nodeType !== 1) return "";
    let s = el.localName;
    if (el.id) s += "#" + el.id;
    else if (el.classList && el.classList.length) s += "." + Array.from(el.classList).slice(0, 3).join(".");
    return s.slice(0, 200);
  };
  const send = (o) => { o.ts = now(); try { emit(JSON.stringify(o)); } catch (e) {} };
  const opts = {capture: true, passive: true};
  addEventListener("click", (e) => send({kind: "click", target: describe(e.target), x: Math.round(e.clientX),
    y: Math.round(e.clientY), button: e.button, trusted: e.isTrusted}), opts);
  addEventListener("keydown", (e) => send({kind: "key",
    key: typeof e.key === "string" && e.key.length > 1 ? e.key.slice(0, 32) : "character",
    alt: e.altKey, ctrl: e.ctrlKey, meta: e.metaKey, shift: e.shiftKey, repeat: e.repeat,
    target: describe(e.target), trusted: e.isTrusted}), opts);
  let timer = null, last = 0, scrolled = null;
  const flush = () => {
    timer = null; last = Date.now();
    const el = scrolled, doc = el === document || el === window || !el || el.nodeType !== 1;
    send({kind: "scroll", target: describe(el), x: Math.round(doc ? scrollX : el.scrollLeft),
      y: Math.round(doc ? scrollY : el.scrollTop)});
  };
  addEventListener("scroll", (e) => {
    scrolled = e.target;
    if (timer === null) timer = setTimeout(flush, Math.max(0, 200 - (Date.now() - last)));
  }, opts);
}
