"""The /docs page: a small self-written renderer of /openapi.json (no CDN, nothing from elsewhere).

Kept as Python strings so it ships inside the package with no package-data setup; the
script builds the page with textContent only (never innerHTML), so nothing in the
document can inject markup.
"""

from __future__ import annotations

from typing import Final

DOCS_SCRIPT: Final = r"""
"use strict";
(function () {
  var root = document.getElementById("api");
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function resolve(spec, schema) {
    var seen = 0;
    while (schema && schema.$ref && seen < 10) {
      var parts = schema.$ref.replace(/^#\//, "").split("/");
      var target = spec;
      for (var i = 0; i < parts.length; i++) { target = target ? target[parts[i]] : undefined; }
      schema = target; seen++;
    }
    return schema || {};
  }
  function typeText(spec, schema) {
    var name = schema && schema.$ref ? schema.$ref.split("/").pop() : null;
    schema = resolve(spec, schema);
    var type = Array.isArray(schema.type) ? schema.type.join(" | ") : (schema.type || "any");
    if (type === "array" && schema.items) { type = "array of " + typeText(spec, schema.items); }
    if (schema.enum) { type += " (" + schema.enum.join(" | ") + ")"; }
    if (schema.format) { type += ", " + schema.format; }
    if (schema["default"] !== undefined) { type += ", default " + JSON.stringify(schema["default"]); }
    return name ? name + " " + type : type;
  }
  function schemaTable(spec, schema) {
    schema = resolve(spec, schema);
    if (!schema.properties) { return el("p", "type", typeText(spec, schema)); }
    var table = el("table", "fields");
    var required = schema.required || [];
    Object.keys(schema.properties).forEach(function (name) {
      var row = el("tr");
      row.appendChild(el("td", "name", name + (required.indexOf(name) >= 0 ? "" : "?")));
      row.appendChild(el("td", "type", typeText(spec, schema.properties[name])));
      table.appendChild(row);
    });
    return table;
  }
  function renderContent(spec, content, box) {
    Object.keys(content || {}).forEach(function (mime) {
      var media = content[mime];
      box.appendChild(el("div", "mime", mime));
      if (media.schema) { box.appendChild(schemaTable(spec, media.schema)); }
      Object.keys(media.examples || {}).forEach(function (key) {
        box.appendChild(el("code", "example", JSON.stringify(media.examples[key].value)));
      });
    });
  }
  function renderOperation(spec, path, method, op) {
    var section = el("details", "op " + method);
    var summary = el("summary");
    summary.appendChild(el("span", "method", method.toUpperCase()));
    summary.appendChild(el("span", "path", path));
    summary.appendChild(el("span", "summary", op.summary || ""));
    if (op.security && op.security.length) { summary.appendChild(el("span", "lock", "token")); }
    section.appendChild(summary);
    if (op.description) { section.appendChild(el("p", "description", op.description)); }
    if (op.parameters && op.parameters.length) {
      section.appendChild(el("h4", null, "Parameters"));
      var table = el("table", "fields");
      op.parameters.forEach(function (p) {
        var row = el("tr");
        row.appendChild(el("td", "name", p.name + (p.required ? "" : "?")));
        row.appendChild(el("td", "type", p["in"] + ", " + typeText(spec, p.schema)));
        table.appendChild(row);
      });
      section.appendChild(table);
    }
    if (op.requestBody) {
      section.appendChild(el("h4", null, "Body" + (op.requestBody.required ? "" : " (optional)")));
      var bodyBox = el("div", "body");
      renderContent(spec, op.requestBody.content, bodyBox);
      section.appendChild(bodyBox);
    }
    section.appendChild(el("h4", null, "Responses"));
    Object.keys(op.responses || {}).sort().forEach(function (status) {
      var response = op.responses[status];
      var box = el("div", "response s" + status.charAt(0));
      var head = el("div", "status");
      head.appendChild(el("strong", null, status));
      head.appendChild(document.createTextNode(" " + (response.description || "")));
      box.appendChild(head);
      renderContent(spec, response.content, box);
      section.appendChild(box);
    });
    return section;
  }
  function render(spec) {
    root.textContent = "";
    var info = spec.info || {};
    document.title = (info.title || "API") + " " + (info.version || "");
    root.appendChild(el("h1", null, (info.title || "API") + " " + (info.version || "")));
    if (info.description) { root.appendChild(el("p", "description", info.description)); }
    var methods = ["get", "post", "put", "patch", "delete"];
    var byTag = {};
    Object.keys(spec.paths || {}).forEach(function (path) {
      methods.forEach(function (method) {
        var op = spec.paths[path][method];
        if (!op) { return; }
        var tag = (op.tags && op.tags[0]) || "other";
        (byTag[tag] = byTag[tag] || []).push([path, method, op]);
      });
    });
    var order = (spec.tags || []).map(function (t) { return t.name; });
    Object.keys(byTag).forEach(function (t) { if (order.indexOf(t) < 0) { order.push(t); } });
    order.forEach(function (tag) {
      if (!byTag[tag]) { return; }
      root.appendChild(el("h2", null, tag));
      byTag[tag].forEach(function (item) { root.appendChild(renderOperation(spec, item[0], item[1], item[2])); });
    });
  }
  fetch("openapi.json", {headers: {"Accept": "application/json"}})
    .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
    .then(render)
    .catch(function (e) { root.textContent = "Could not load openapi.json: " + e.message; });
})();
"""

DOCS_HTML: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>idlakd API</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem; color: #222; }
h2 { border-bottom: 1px solid #ccc; text-transform: capitalize; margin-top: 2rem; }
details.op { border: 1px solid #ddd; border-radius: 4px; margin: .4rem 0; padding: .3rem .6rem; }
summary { cursor: pointer; }
.method { display: inline-block; min-width: 4.5rem; font-weight: bold; font-family: monospace; }
.get .method { color: #1565c0; } .post .method { color: #2e7d32; } .delete .method { color: #c62828; }
.path { font-family: monospace; margin-right: 1rem; }
.summary { color: #555; }
.lock { margin-left: .5rem; font-size: .8em; background: #fff3cd; padding: 0 .3rem; border-radius: 3px; }
table.fields { border-collapse: collapse; margin: .2rem 0 .4rem; }
table.fields td { border: 1px solid #eee; padding: .1rem .5rem; font-family: monospace; }
.response { margin: .3rem 0 .3rem .5rem; padding-left: .5rem; border-left: 3px solid #ccc; }
.response.s2 { border-color: #2e7d32; } .response.s4 { border-color: #ef6c00; } .response.s5 { border-color: #c62828; }
.mime { font-size: .85em; color: #666; }
code.example { display: block; font-size: .85em; background: #f6f6f6; padding: .1rem .3rem; margin: .1rem 0; }
</style>
</head>
<body>
<main id="api">Loading openapi.json&hellip;</main>
<noscript>This page needs JavaScript; the raw document is at <a href="openapi.json">openapi.json</a>.</noscript>
<script>""" + DOCS_SCRIPT + """</script>
</body>
</html>
"""
