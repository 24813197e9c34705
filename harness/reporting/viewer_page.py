"""The viewer's page: HTML, CSS and JavaScript in one string (no external resources).

``__TITLE__`` and ``__DATA__`` (the JSON from harness.reporting.viewer.build_data) are filled in by
harness.reporting.viewer.render_html. Samples are rendered a page at a time from the embedded JSON;
all sample text goes through ``textContent``, never ``innerHTML``.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:20px} h2{font-size:17px;margin-top:24px} h3{font-size:15px}
table.summary{border-collapse:collapse;margin:8px 0} table.summary td,table.summary th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.note{color:#666;font-size:12px} .notes li{color:#a40}
.controls{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #ddd;display:flex;flex-wrap:wrap;gap:10px;align-items:center}
.card{border:1px solid #ccc;border-radius:6px;padding:8px;margin:8px 0;background:#fafafa}
.card.right{border-left:6px solid #2a2} .card.wrong{border-left:6px solid #c33} .card.failed{border-left:6px solid #f90}
.demos{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0}
.demo,.query{border:1px solid #ddd;background:#fff;padding:4px;max-width:220px;font-size:12px}
.query{border-color:#36c}
.thumb{display:block;max-width:96px;max-height:96px}
.noimg{display:inline-block;color:#888;font-size:11px;border:1px dashed #bbb;padding:2px}
pre{white-space:pre-wrap;word-break:break-word;background:#fff;border:1px solid #eee;padding:4px;margin:2px 0;max-height:12em;overflow:auto;font-size:12px}
.kv b{display:inline-block;min-width:90px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:8px}
</style></head><body>
<h1>__TITLE__</h1>
<ul class="notes" id="notes"></ul>
<h2>Comparison</h2><div id="series"></div><div id="table"></div><div id="paired"></div><div id="plot"></div>
<h2>Samples</h2>
<div class="controls">
 <label>cell <select id="cell"></select></label>
 <label>disagreements with <select id="other"><option value="">(none)</option></select></label>
 <label><input type="checkbox" id="wrong"> <span id="wronglabel">wrong only</span></label>
 <label><input type="checkbox" id="failed"> failed only</label>
 <input type="search" id="search" placeholder="search id, prediction, answers, prompt" size="34">
 <button id="prev">&larr;</button><span id="count"></span><button id="next">&rarr;</button>
</div>
<div id="cards"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const PAGE = 50;
let page = 0;
const $ = (id) => document.getElementById(id);
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined && text !== null) e.textContent = String(text); return e; }
for (const n of D.notes) $("notes").appendChild(el("li", "", n));
$("table").innerHTML = D.table_html;
$("paired").innerHTML = D.paired_html;
if (D.series_html) { $("series").innerHTML = D.series_html; }
if (D.plot) { const im = el("img"); im.src = D.plot; im.alt = "metric vs shots"; $("plot").appendChild(im); }
D.cells.forEach((c, i) => {
  const o = el("option", "", `${c.checkpoint} | ${c.task} | ${c.shots}-shot | seed ${c.seed} | ${c.metric} ${Number(c.value).toFixed(2)} | n=${c.n}` + (c.n_failed ? ` (${c.n_failed} failed)` : ""));
  o.value = i; $("cell").appendChild(o);
});
function cellMean(c) { if (c._mean === undefined) { let s = 0; for (const x of c.samples) s += Number(x.score) || 0; c._mean = c.samples.length ? s / c.samples.length : 0; } return c._mean; }
function isWrong(c, s) { return c.bounded ? Number(s.score) < 1 : Number(s.score) < cellMean(c); }
function promptOf(s) { if (s._prompt === undefined) s._prompt = s.prompt.map((i) => D.strings[i]).join(""); return s._prompt; }
function matches(s, q) {
  if (!q) return true;
  return [s.id, s.pred, s.raw, promptOf(s), s.refs.join(" | ")].some((t) => String(t).toLowerCase().includes(q));
}
function fillOther() {
  const c = D.cells[+$("cell").value], sel = $("other"), keep = sel.value;
  sel.length = 1;
  D.cells.forEach((o, i) => {
    if (o !== c && o.task === c.task && o.shots === c.shots && o.seed === c.seed && o.checkpoint !== c.checkpoint) {
      const opt = el("option", "", o.checkpoint); opt.value = i; sel.appendChild(opt);
    }
  });
  sel.value = [...sel.options].some((o) => o.value === keep) ? keep : "";
}
function media(ref, cls) {
  const [key, name] = ref;
  if (key && D.images[key]) { const im = el("img", "thumb " + cls); im.src = D.images[key]; im.alt = name; im.title = name; return im; }
  return el("span", "noimg", name);
}
function card(c, s) {
  const failed = !!s.error, wrong = isWrong(c, s);
  const d = el("div", "card " + (failed ? "failed" : wrong ? "wrong" : "right"));
  d.dataset.qid = s.id; d.dataset.score = s.score;
  const head = el("div", "", `${c.checkpoint} · query ${s.id} · score ${Number(s.score).toFixed(3)}` + (failed ? " · FAILED" : ""));
  head.style.fontWeight = "bold"; d.appendChild(head);
  const row = el("div", "demos"), ex = D.examples[c.ex];
  s.demos.forEach((id, k) => {
    const [imgs, text] = ex[id] || [[], "", ""];
    const b = el("div", "demo"); b.appendChild(el("div", "note", `demo ${k + 1}: ${id}` + (c.text_only ? " (text only)" : "")));
    if (!c.text_only) for (const r of imgs) b.appendChild(media(r, "demo-img"));
    b.appendChild(el("div", "", text)); row.appendChild(b);
  });
  const q = el("div", "query"); q.appendChild(el("div", "note", "query"));
  const [qimgs, , qtext] = ex[s.id] || [[], "", ""];
  for (const r of qimgs) q.appendChild(media(r, "query-img"));
  q.appendChild(el("div", "", qtext));
  row.appendChild(q); d.appendChild(row);
  const kv = (k, v, pre) => { const line = el("div", "kv"); line.appendChild(el("b", "", k)); line.appendChild(pre ? el("pre", "", v) : el("span", "", v)); d.appendChild(line); };
  kv("prompt", promptOf(s), true);
  kv("raw output", s.raw, true);
  kv("prediction", s.pred);
  kv("references", s.refs.join(" | "));
  if (failed) kv("error", s.error);
  return d;
}
function render() {
  const c = D.cells[+$("cell").value];
  $("wronglabel").textContent = c.bounded ? "wrong only (score < 1)" : "wrong only (score below the cell mean)";
  const q = $("search").value.trim().toLowerCase();
  const other = $("other").value === "" ? null : D.cells[+$("other").value];
  let items;
  if (other) {
    const byId = new Map(other.samples.map((s) => [s.id, s]));
    items = [];
    for (const s of c.samples) {
      const t = byId.get(s.id);
      if (t && (String(s.pred).trim().toLowerCase() !== String(t.pred).trim().toLowerCase() || Number(s.score) !== Number(t.score))) items.push([s, t]);
    }
  } else items = c.samples.map((s) => [s, null]);
  items = items.filter(([s, t]) => (!$("wrong").checked || isWrong(c, s) || (t && isWrong(other, t)))
    && (!$("failed").checked || s.error || (t && t.error)) && (matches(s, q) || (t && matches(t, q))));
  const pages = Math.max(1, Math.ceil(items.length / PAGE));
  page = Math.min(page, pages - 1);
  const shown = items.slice(page * PAGE, (page + 1) * PAGE);
  $("count").textContent = ` ${items.length ? page * PAGE + 1 : 0}-${page * PAGE + shown.length} of ${items.length}` + (other ? " disagreements" : " samples") + ` (page ${page + 1}/${pages}) `;
  const box = $("cards"); box.textContent = "";
  for (const [s, t] of shown) {
    if (t) { const p = el("div", "pair"); p.appendChild(card(c, s)); p.appendChild(card(other, t)); box.appendChild(p); }
    else box.appendChild(card(c, s));
  }
}
const reset = () => { page = 0; render(); };
$("cell").addEventListener("change", () => { fillOther(); reset(); });
for (const id of ["other", "wrong", "failed"]) $(id).addEventListener("change", reset);
$("search").addEventListener("input", reset);
$("prev").addEventListener("click", () => { page = Math.max(0, page - 1); render(); });
$("next").addEventListener("click", () => { page += 1; render(); });
if (D.cells.length) { fillOther(); render(); } else $("cards").textContent = "no cells";
</script></body></html>
"""
