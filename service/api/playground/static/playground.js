// The lstm-serve playground: plain JavaScript over the public HTTP API (no framework, no build step).
//
// A session on the server holds what the page has fed it: the box's text, then any generated text. Typing sends
// only the new characters (POST /v1/sessions/{id}/predict with expected_position). Any other edit (a deletion, a
// change in the middle, typing after a generation) resets the session and replays the box's text: one request,
// since a session is defined by the text it has consumed. Stop aborts the stream and does the same reset and
// replay of what is shown, so the session holds exactly the characters on the page.
//
// The model picker lists every served model version (GET /v1/models). Choosing one starts a new branch: a session
// on that version (POST /v1/sessions with "model" and "version") that replays the box's text; predicting,
// generating, forking and inspecting then go through that session or name its version.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "lstm-serve-api-key";
  const TOP_K = 8; // bars
  const UNITS = 12; // heatmap rows per gate and layer
  const GATES = [
    ["f", "forget f"],
    ["i", "input i"],
    ["o", "output o"],
    ["c", "cell C"],
  ];
  const LAYOUT = { label: 64, charRow: 18, row: 6, gap: 6, minCell: 7, maxCell: 14 };

  const el = {
    prompt: $("prompt"),
    promptError: $("prompt-error"),
    next: $("next"),
    sessionId: $("session-id"),
    position: $("position"),
    branches: $("branches"),
    fork: $("fork"),
    reset: $("reset"),
    form: $("generate-form"),
    generate: $("generate"),
    stop: $("stop"),
    keep: $("keep"),
    output: $("output"),
    generateStatus: $("generate-status"),
    gates: $("gates"),
    gatesStatus: $("gates-status"),
    unit: $("unit"),
    unitText: $("unit-text"),
    tooltip: $("tooltip"),
    facts: $("facts"),
    model: $("model"),
    keyForm: $("key-form"),
    key: $("api-key"),
    keyError: $("key-error"),
  };

  // ---- state -------------------------------------------------------------------------------------------------
  let apiKey = null; // set only when the server asked for one
  let keysOn = false;
  let limits = { max_inspect_length: 256, max_generate_tokens: 1000, max_text_length: 8192 };
  const branches = []; // {id, name, consumed, output, position}
  let branch = null; // the current one
  let syncing = null; // the running sync (a promise), so syncs never overlap
  let syncAgain = false;
  let generation = null; // {controller, stopped}
  let inspection = null; // the last inspection drawn: {text, body}
  let inspectTimer = 0;
  let inspectSeq = 0;
  let picked = null; // {layer, unit}
  let models = []; // the picker's entries: {name, version, state}
  let factsSeq = 0;

  // ---- the API -----------------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    if (apiKey) h.Authorization = `Bearer ${apiKey}`;
    return h;
  }

  async function failure(response) {
    let code = `http_${response.status}`;
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.error) ({ code, message } = body.error);
    } catch (_) {
      /* not JSON */
    }
    if (response.status === 401) askForKey(apiKey ? "The server refused this key." : "This server needs an API key.");
    return new ApiError(response.status, code, message);
  }

  async function api(method, path, body, options = {}) {
    const response = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: options.signal,
      keepalive: options.keepalive,
    });
    if (!response.ok) throw await failure(response);
    return response.status === 204 ? null : response.json();
  }

  // ---- API key -----------------------------------------------------------------------------------------------
  function askForKey(message) {
    keysOn = true;
    el.keyForm.hidden = false;
    el.keyError.textContent = message;
  }

  el.keyForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = el.key.value.trim();
    if (!candidate) return;
    apiKey = candidate;
    try {
      await loadModel();
    } catch (error) {
      apiKey = null;
      sessionStorage.removeItem(KEY_STORAGE);
      el.keyError.textContent =
        error.status === 401 ? "The server refused this key (401 unauthorized)." : error.message;
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, candidate); // only when keys are on: this form is hidden otherwise
    el.keyError.textContent = "";
    el.key.value = "";
    el.key.placeholder = "key accepted";
    await start();
  });

  // ---- model facts, the model picker and counters ------------------------------------------------------------
  // The facts of one model version (`choice`: {name, version} as the picker and sessions name it; none: the
  // default model). Named as the repository names it, which may differ from the name inside the ONNX file.
  async function loadModel(choice = null) {
    const seq = ++factsSeq;
    const query = choice
      ? `?model=${encodeURIComponent(choice.name)}&version=${encodeURIComponent(choice.version)}`
      : "";
    const m = await api("GET", `/v1/model${query}`);
    if (seq !== factsSeq) return m; // a later choice's facts are on their way
    const name = choice ? choice.name : m.name;
    const version = choice ? choice.version : m.version;
    const loss = m.val_loss == null ? "" : ` · validation loss ${m.val_loss.toFixed(3)} nats/char`;
    const layers = `${m.layers} layer${m.layers === 1 ? "" : "s"}`;
    el.facts.textContent =
      `${name} v${version} · ${layers} × ${m.hidden_size} units${m.peephole ? " (peephole)" : ""}` +
      ` · ${m.vocab_size} characters · ${m.provider} · ${m.fingerprint.slice(0, 19)}…${loss}`;
    el.facts.title = `vocabulary: ${m.vocabulary}`;
    el.facts.dataset.model = name;
    el.facts.dataset.version = version;
    return m;
  }

  function choiceOf(b) {
    return b && b.model ? { name: b.model, version: b.version } : null;
  }

  function sessionBody(b) {
    return b && b.model ? { model: b.model, version: b.version } : {};
  }

  function showFacts(b) {
    const choice = choiceOf(b);
    if (!choice || (el.facts.dataset.model === choice.name && el.facts.dataset.version === choice.version)) return;
    loadModel(choice).catch((error) => showError(el.promptError, error));
  }

  // Every served version, the default (the first session's) marked; versions being unloaded are listed but cannot
  // be chosen. With one model the picker shows that one entry.
  async function loadModels() {
    let list = [];
    try {
      list = (await api("GET", "/v1/models")).data;
    } catch (_) {
      /* the picker then shows the current session's model only */
    }
    const defaultChoice = branches.length ? choiceOf(branches[0]) : null;
    models = [];
    for (const card of list) {
      for (const v of card.versions) models.push({ name: card.id, version: v.version, state: v.state });
    }
    if (branch && branch.model && !models.some((m) => m.name === branch.model && m.version === branch.version)) {
      models.push({ name: branch.model, version: branch.version, state: "READY" });
    }
    el.model.replaceChildren(
      ...models.map((m, n) => {
        const option = document.createElement("option");
        option.value = String(n);
        const isDefault = defaultChoice && defaultChoice.name === m.name && defaultChoice.version === m.version;
        option.textContent =
          `${m.name} v${m.version}` + (isDefault ? " (default)" : "") + (m.state === "READY" ? "" : " (unloading)");
        option.disabled = m.state !== "READY";
        return option;
      }),
    );
    showBranch();
  }

  el.model.addEventListener("change", async () => {
    const choice = models[Number(el.model.value)];
    if (!choice || generation) return;
    el.output.textContent = "";
    el.generateStatus.textContent = "";
    drawBars([]);
    try {
      await newBranch(`${choice.name} v${choice.version}`, choice);
      el.promptError.textContent = "";
    } catch (error) {
      showError(el.promptError, error);
      showBranch(); // back to the current branch's model
      return;
    }
    showFacts(branch);
    scheduleInspection();
    await sync(); // the new session replays the box's text
  });

  let lastCount = null;
  async function pollCounters() {
    try {
      const response = await fetch("/playground/summary");
      if (!response.ok) return;
      const s = await response.json();
      limits = s.limits;
      el.form.querySelector("#max-tokens").max = String(limits.max_generate_tokens);
      if (!s.counters) return;
      const c = s.counters;
      $("count-sessions").textContent = String(c.sessions);
      $("count-streams").textContent = String(c.streams);
      const tokens = c.prompt_tokens + c.generated_tokens;
      if (lastCount) {
        const rate = (tokens - lastCount.tokens) / Math.max(0.001, s.time - lastCount.time);
        $("count-rate").textContent = rate >= 100 ? rate.toFixed(0) : rate.toFixed(1);
      }
      lastCount = { tokens, time: s.time };
    } catch (_) {
      /* the server is restarting: try again at the next tick */
    }
  }

  // ---- sessions and branches ---------------------------------------------------------------------------------
  function showBranch() {
    el.sessionId.textContent = branch ? branch.id : "–";
    el.position.textContent = branch ? String(branch.position) : "0";
    const onModel = models.findIndex((m) => branch && m.name === branch.model && m.version === branch.version);
    if (onModel >= 0) el.model.value = String(onModel);
    el.model.disabled = generation !== null || models.length < 2;
    const mixed = new Set(branches.map((b) => `${b.model} v${b.version}`)).size > 1;
    el.branches.replaceChildren(
      ...branches.map((b, n) => {
        const option = document.createElement("option");
        option.value = String(n);
        option.textContent = mixed && !b.name.startsWith(b.model) ? `${b.name} (${b.model} v${b.version})` : b.name;
        option.selected = b === branch;
        return option;
      }),
    );
    el.keep.disabled = !branch || !branch.output || generation !== null;
  }

  // A branch on `choice` ({name, version}; none: the server's default model).
  async function newBranch(name, choice = null) {
    const created = await api("POST", "/v1/sessions", choice ? { model: choice.name, version: choice.version } : {});
    const b = {
      id: created.session_id,
      name,
      consumed: "",
      output: "",
      position: created.position,
      model: created.model,
      version: created.version,
    };
    branches.push(b);
    branch = b;
    showBranch();
    return b;
  }

  // Bring the session to the box's text (plus the output it already holds): append when the box only grew,
  // otherwise reset and replay. Calls never overlap; a call during a sync makes it run once more.
  function sync() {
    if (syncing) {
      syncAgain = true;
      return syncing;
    }
    syncing = (async () => {
      try {
        do {
          syncAgain = false;
          await syncOnce();
        } while (syncAgain);
      } finally {
        syncing = null;
      }
    })();
    return syncing;
  }

  async function syncOnce(retried = false) {
    if (!branch) return;
    const want = el.prompt.value;
    const b = branch;
    if (want === b.consumed && !b.stale) return;
    try {
      if (b.output || b.stale || !want.startsWith(b.consumed)) {
        await replay(b, want);
      } else {
        const r = await api("POST", `/v1/sessions/${b.id}/predict`, {
          text: want.slice(b.consumed.length),
          top_k: TOP_K,
          expected_position: b.position,
        });
        b.consumed = want;
        b.position = r.position;
        drawBars(r.next);
      }
      el.promptError.textContent = "";
    } catch (error) {
      if (!retried && ["session_not_found", "session_expired", "position_conflict"].includes(error.code)) {
        if (error.code !== "position_conflict") b.id = (await api("POST", "/v1/sessions", sessionBody(b))).session_id;
        b.stale = true; // the next attempt starts over from an empty state
        return syncOnce(true);
      }
      showError(el.promptError, error);
      return;
    } finally {
      showBranch();
    }
    scheduleInspection();
  }

  // Reset the session and feed `text` (and nothing generated): the session then holds exactly the box's text.
  async function replay(b, text, output = "") {
    await api("POST", `/v1/sessions/${b.id}/reset`);
    b.consumed = "";
    b.output = "";
    b.position = 0;
    b.stale = false;
    el.output.textContent = output;
    const all = text + output;
    if (all) {
      const r = await api("POST", `/v1/sessions/${b.id}/predict`, { text: all, top_k: TOP_K, expected_position: 0 });
      b.position = r.position;
      drawBars(r.next);
    } else {
      drawBars([]);
    }
    b.consumed = text;
    b.output = output;
  }

  function showError(target, error) {
    const where = error.code === "invalid_token" ? " Remove it to go on." : "";
    target.textContent = error instanceof ApiError ? `${error.message} (${error.code}).${where}` : String(error);
  }

  // ---- next-character bars -----------------------------------------------------------------------------------
  function shown(ch) {
    return ch === "\n" ? "↵" : ch === " " ? "␣" : ch;
  }

  function drawBars(next, note = "Type in the box to see the model's guesses.") {
    if (!next.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = note;
      el.next.replaceChildren(li);
      return;
    }
    el.next.replaceChildren(
      ...next.map((t) => {
        const li = document.createElement("li");
        li.dataset.testid = "next-item";
        li.dataset.token = t.token;
        li.dataset.prob = String(t.prob);
        const label = document.createElement("span");
        label.className = "char";
        label.textContent = shown(t.token);
        const bar = document.createElement("span");
        bar.className = "bar";
        const fill = document.createElement("span");
        fill.className = "fill";
        fill.style.width = `${(100 * t.prob).toFixed(1)}%`;
        bar.append(fill);
        const value = document.createElement("span");
        value.className = "prob";
        value.textContent = `${(100 * t.prob).toFixed(1)}%`;
        li.append(label, bar, value);
        li.setAttribute("aria-label", `${JSON.stringify(t.token)}: ${(100 * t.prob).toFixed(1)} percent`);
        return li;
      }),
    );
  }

  // ---- generation over server-sent events --------------------------------------------------------------------
  function number(id, fallback) {
    const v = $(id).value.trim();
    return v === "" ? fallback : Number(v);
  }

  function setGenerating(on) {
    el.generate.disabled = on;
    el.stop.disabled = !on;
    el.fork.disabled = on;
    el.reset.disabled = on;
    el.branches.disabled = on;
    el.model.disabled = on || models.length < 2;
    el.prompt.readOnly = on; // the session is busy writing; typing resumes when it is done
    showBranch();
  }

  async function generate() {
    if (generation || !branch) return;
    await sync();
    if (el.promptError.textContent) return;
    const b = branch;
    const body = {
      stream: true,
      max_tokens: number("max-tokens", 300),
      temperature: number("temperature", 0.7),
      top_k: number("top-k", 0),
      expected_position: b.position,
    };
    const seed = number("seed", null);
    if (seed !== null) body.seed = seed;
    const controller = new AbortController();
    generation = { controller, stopped: false };
    setGenerating(true);
    el.generateStatus.textContent = "generating…";
    let count = 0;
    const started = performance.now();
    try {
      const response = await fetch(`/v1/sessions/${b.id}/generate`, {
        method: "POST",
        headers: headers(true),
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!response.ok) throw await failure(response);
      let final = null;
      await readEvents(response, (event) => {
        if (event.error) throw new ApiError(0, event.error.code, event.error.message);
        if (event.finish_reason) {
          final = event;
          return;
        }
        b.output += event.token;
        b.position = event.position;
        el.output.textContent = b.output;
        el.position.textContent = String(b.position);
        count += 1;
      });
      drawBars([], "After the generated text: press Keep as prompt and type on, or Generate again.");
      const seconds = (performance.now() - started) / 1000;
      el.generateStatus.textContent = final
        ? `${count} characters in ${seconds.toFixed(2)} s (${final.finish_reason === "stop" ? "stop string" : "max tokens"})`
        : `${count} characters`;
    } catch (error) {
      if (generation.stopped) {
        // Characters the server sent after the last one shown are dropped: replay exactly what is shown.
        await replay(b, b.consumed, b.output);
        el.generateStatus.textContent = `stopped after ${count} characters`;
      } else {
        showError(el.generateStatus, error);
      }
    } finally {
      generation = null;
      setGenerating(false);
      scheduleInspection();
    }
  }

  // Read `data: ...` events until [DONE]; onEvent gets each JSON payload.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split(/\r?\n\r?\n/);
      buffer = events.pop();
      for (const block of events) {
        const data = block
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  el.stop.addEventListener("click", () => {
    if (!generation) return;
    generation.stopped = true;
    generation.controller.abort();
  });
  el.keep.addEventListener("click", () => {
    if (!branch || !branch.output) return;
    // The session already holds the output: it simply becomes part of the box's text.
    branch.consumed += branch.output;
    branch.output = "";
    el.prompt.value = branch.consumed;
    el.output.textContent = "";
    el.generateStatus.textContent = "";
    showBranch();
    el.prompt.focus();
  });

  // ---- fork, reset, switch branches --------------------------------------------------------------------------
  el.fork.addEventListener("click", async () => {
    if (!branch) return;
    await sync();
    try {
      const forked = await api("POST", `/v1/sessions/${branch.id}/fork`, {});
      const b = { ...branch, id: forked.session_id, name: `fork ${branches.length}`, stale: false };
      branches.push(b);
      branch = b;
      showBranch();
      el.generateStatus.textContent = `forked: ${b.name} continues from position ${b.position}`;
    } catch (error) {
      showError(el.generateStatus, error);
    }
  });

  el.reset.addEventListener("click", async () => {
    if (!branch) return;
    el.prompt.value = "";
    try {
      await replay(branch, "");
    } catch (error) {
      showError(el.promptError, error);
    }
    el.generateStatus.textContent = "";
    showBranch();
    scheduleInspection();
    el.prompt.focus();
  });

  el.branches.addEventListener("change", () => {
    branch = branches[Number(el.branches.value)];
    el.prompt.value = branch.consumed;
    el.output.textContent = branch.output;
    drawBars([]);
    showBranch();
    showFacts(branch); // branches may run on different models
    scheduleInspection();
  });

  el.prompt.addEventListener("input", () => {
    sync();
  });

  // ---- gates and memory --------------------------------------------------------------------------------------
  function scheduleInspection() {
    clearTimeout(inspectTimer);
    inspectTimer = setTimeout(runInspection, 120);
  }

  async function runInspection() {
    if (!branch) return;
    const full = branch.consumed + branch.output;
    const text = full.slice(0, limits.max_inspect_length);
    if (!text) {
      inspection = null;
      el.gates.replaceChildren();
      el.unit.replaceChildren();
      el.unitText.replaceChildren();
      el.gatesStatus.textContent = "Type something to see the gates.";
      return;
    }
    const model = sessionBody(branch);
    if (inspection && inspection.text === text && inspection.model === JSON.stringify(model)) return;
    const seq = ++inspectSeq;
    try {
      const body = await api("POST", "/v1/inspect", {
        ...model, // the branch's model version, as its session
        text,
        units: UNITS,
        gates: GATES.map(([g]) => g),
        precision: 3,
        top_k: 1,
      });
      if (seq !== inspectSeq) return; // a newer one is on its way
      inspection = { text, body, model: JSON.stringify(model) };
      drawGates(body);
      el.gatesStatus.textContent =
        full.length > text.length ? `Showing the first ${text.length} characters (the server's inspection limit).` : "";
    } catch (error) {
      if (seq === inspectSeq) showError(el.gatesStatus, error);
    }
  }

  function cellWidth(steps) {
    const room = Math.max(200, el.gates.clientWidth - LAYOUT.label - 4);
    return Math.max(LAYOUT.minCell, Math.min(LAYOUT.maxCell, Math.floor(room / Math.max(1, steps))));
  }

  function colour(gate, value) {
    return window.cividis(gate === "c" ? 0.5 + 0.5 * Math.tanh(value) : value);
  }

  function drawGates(body) {
    const steps = body.steps;
    const units = body.units;
    const cell = cellWidth(steps.length);
    const band = units[0].length * LAYOUT.row;
    const height = LAYOUT.charRow + GATES.length * (band + LAYOUT.gap);
    const width = LAYOUT.label + steps.length * cell;
    const ratio = window.devicePixelRatio || 1;
    const blocks = [];
    for (let layer = 0; layer < body.layers; layer++) {
      const figure = document.createElement("figure");
      figure.className = "layer";
      const caption = document.createElement("figcaption");
      caption.textContent =
        `Layer ${layer + 1}` + (layer === 0 ? " (reads the characters)" : " (reads layer " + layer + ")");
      const canvas = document.createElement("canvas");
      canvas.width = width * ratio;
      canvas.height = height * ratio;
      canvas.style.width = `${width}px`;
      canvas.style.height = `${height}px`;
      canvas.setAttribute("role", "img");
      canvas.setAttribute(
        "aria-label",
        `Layer ${layer + 1}: forget, input and output gates and cell state of units ${units[layer].join(", ")}, ` +
          `over ${steps.length} characters`,
      );
      const ctx = canvas.getContext("2d");
      ctx.scale(ratio, ratio);
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, width, height);
      ctx.font = "12px 'DejaVu Sans Mono', ui-monospace, monospace";
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillStyle = "#222";
      if (cell >= 8) steps.forEach((s, t) => ctx.fillText(shown(s.char), LAYOUT.label + t * cell + cell / 2, 9));
      GATES.forEach(([gate, name], g) => {
        const y0 = LAYOUT.charRow + g * (band + LAYOUT.gap);
        ctx.textAlign = "right";
        ctx.fillStyle = "#333";
        ctx.font = "11px 'DejaVu Sans', system-ui, sans-serif";
        ctx.fillText(name, LAYOUT.label - 6, y0 + band / 2);
        steps.forEach((s, t) => {
          const values = s.layers[layer][gate];
          values.forEach((v, u) => {
            ctx.fillStyle = colour(gate, v).css;
            ctx.fillRect(LAYOUT.label + t * cell, y0 + u * LAYOUT.row, cell, LAYOUT.row);
          });
        });
        if (picked && picked.layer === layer) {
          const u = units[layer].indexOf(picked.unit);
          if (u >= 0) {
            ctx.strokeStyle = "#d6336c";
            ctx.lineWidth = 1.5;
            ctx.strokeRect(LAYOUT.label - 1, y0 + u * LAYOUT.row - 0.5, steps.length * cell + 1, LAYOUT.row + 1);
          }
        }
      });
      canvas.addEventListener("mousemove", (event) => hover(event, layer, cell, band));
      canvas.addEventListener("mouseleave", () => (el.tooltip.hidden = true));
      canvas.addEventListener("click", (event) => {
        const hit = locate(event, layer, cell, band);
        if (hit && hit.unit !== null) pick(layer, hit.unit);
      });
      const scroller = document.createElement("div");
      scroller.className = "scroller";
      scroller.append(canvas);
      figure.append(caption, scroller);
      blocks.push(figure);
    }
    el.gates.replaceChildren(...blocks);
    // The unit picker: every unit shown, top layer first.
    if (!picked || !units[picked.layer] || !units[picked.layer].includes(picked.unit)) {
      const top = body.layers - 1;
      picked = { layer: top, unit: units[top][0] };
    }
    const options = [];
    for (let layer = body.layers - 1; layer >= 0; layer--) {
      units[layer].forEach((unit, rank) => {
        const option = document.createElement("option");
        option.value = `${layer}:${unit}`;
        option.textContent = `layer ${layer + 1} · unit ${unit}${rank === 0 ? " (most active)" : ""}`;
        option.selected = picked.layer === layer && picked.unit === unit;
        options.push(option);
      });
    }
    el.unit.replaceChildren(...options);
    drawUnitText(body);
  }

  function locate(event, layer, cell, band) {
    const rect = event.currentTarget.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    const t = Math.floor((x - LAYOUT.label) / cell);
    const steps = inspection.body.steps;
    if (t < 0 || t >= steps.length) return null;
    const inBands = y - LAYOUT.charRow;
    const g = Math.floor(inBands / (band + LAYOUT.gap));
    const within = inBands - g * (band + LAYOUT.gap);
    const row = Math.floor(within / LAYOUT.row);
    const onRow = inBands >= 0 && g < GATES.length && within < band;
    return { t, gate: onRow ? GATES[g][0] : null, unit: onRow ? inspection.body.units[layer][row] : null, row };
  }

  function hover(event, layer, cell, band) {
    const hit = locate(event, layer, cell, band);
    if (!hit) {
      el.tooltip.hidden = true;
      return;
    }
    const step = inspection.body.steps[hit.t];
    const lines = [`'${shown(step.char)}' at position ${step.position}`];
    step.layers.forEach((l, n) => {
      const m = l.mean;
      lines.push(
        `layer ${n + 1} means: f ${m.f.toFixed(2)}  i ${m.i.toFixed(2)}  o ${m.o.toFixed(2)}  C ${m.c.toFixed(2)}`,
      );
    });
    if (hit.unit !== null) {
      const l = step.layers[layer];
      const v = (g) => l[g][hit.row].toFixed(3);
      lines.push(`layer ${layer + 1} unit ${hit.unit}: f ${v("f")}  i ${v("i")}  o ${v("o")}  C ${v("c")}`);
      lines.push("click: colour the text by this unit");
    }
    el.tooltip.textContent = lines.join("\n");
    el.tooltip.hidden = false;
    const x = Math.min(event.clientX + 14, window.innerWidth - el.tooltip.offsetWidth - 8);
    el.tooltip.style.left = `${Math.max(4, x)}px`;
    el.tooltip.style.top = `${event.clientY + 16}px`;
  }

  function pick(layer, unit) {
    picked = { layer, unit };
    if (inspection) drawGates(inspection.body);
  }

  el.unit.addEventListener("change", () => {
    const [layer, unit] = el.unit.value.split(":").map(Number);
    pick(layer, unit);
  });

  function drawUnitText(body) {
    const row = body.units[picked.layer].indexOf(picked.unit);
    const title = document.createElement("p");
    title.className = "unit-title";
    title.textContent = `Cell state C of layer ${picked.layer + 1}, unit ${picked.unit}, after each character:`;
    const text = document.createElement("p");
    text.className = "coloured";
    for (const step of body.steps) {
      const value = step.layers[picked.layer].c[row];
      const span = document.createElement("span");
      const c = colour("c", value);
      span.style.backgroundColor = c.css;
      span.style.color = c.light ? "#111" : "#fff";
      span.textContent = step.char === "\n" ? "↵\n" : step.char;
      span.title = `'${shown(step.char)}' C = ${value.toFixed(3)}`;
      text.append(span);
    }
    el.unitText.replaceChildren(title, text);
  }

  window.addEventListener("resize", () => {
    if (inspection) drawGates(inspection.body);
  });

  // ---- start -------------------------------------------------------------------------------------------------
  async function start() {
    try {
      if (!branch) {
        await newBranch("main");
        await loadModels();
        showFacts(branch); // named as the repository names it
      }
      el.promptError.textContent = "";
      await sync();
    } catch (error) {
      showError(el.promptError, error);
    }
  }

  window.addEventListener("pagehide", () => {
    // Free the sessions this page made (best effort; they expire anyway).
    for (const b of branches) {
      fetch(`/v1/sessions/${b.id}`, { method: "DELETE", headers: headers(false), keepalive: true }).catch(() => {});
    }
  });

  async function boot() {
    drawBars([]);
    el.gatesStatus.textContent = "Type something to see the gates.";
    pollCounters();
    setInterval(pollCounters, 2000);
    apiKey = sessionStorage.getItem(KEY_STORAGE);
    try {
      await loadModel();
    } catch (error) {
      if (error.status === 401) {
        if (apiKey) sessionStorage.removeItem(KEY_STORAGE);
        apiKey = null;
        askForKey("This server needs an API key.");
        el.key.focus();
      } else {
        el.facts.textContent = `The server did not answer: ${error.message}`;
      }
      return;
    }
    await start();
    el.prompt.focus();
  }

  // For tests and the curious: the current session and branch, read-only.
  window.playground = {
    get sessionId() {
      return branch ? branch.id : null;
    },
    get branch() {
      return branch ? { ...branch } : null;
    },
    get idle() {
      return !syncing && !generation;
    },
    get inspected() {
      return inspection ? inspection.text : null;
    },
    get keysOn() {
      return keysOn;
    },
    get model() {
      return choiceOf(branch);
    },
  };

  boot();
})();
