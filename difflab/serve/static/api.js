// Renders /openapi.json as a readable list of endpoints, their parameters, bodies and responses.
"use strict";
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
};

function resolve(spec, schema) {
  while (schema && schema.$ref) schema = spec.components.schemas[schema.$ref.split("/").pop()];
  return schema || {};
}

function typeOf(spec, schema) {
  schema = resolve(spec, schema);
  if (schema.anyOf) return schema.anyOf.map((s) => typeOf(spec, s)).join(" | ");
  if (schema.type === "array") return `array of ${typeOf(spec, schema.items)}`;
  return schema.type || schema.title || "object";
}

function fieldsTable(spec, schema) {
  schema = resolve(spec, schema);
  const required = new Set(schema.required || []);
  const table = el("table", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"), el("th", {}, "default"), el("th", {}, "meaning")));
  for (const [name, field] of Object.entries(schema.properties || {})) {
    const def = field.default === undefined ? (required.has(name) ? "required" : "") : JSON.stringify(field.default);
    table.append(el("tr", {}, el("td", {}, el("code", {}, name)), el("td", {}, typeOf(spec, field)), el("td", {}, def),
      el("td", { class: "muted" }, field.description || "")));
  }
  return table;
}

function endpoint(spec, path, method, op) {
  const section = el("section", {}, el("h3", {}, el("span", { class: `method ${method.toUpperCase()}` }, method.toUpperCase()), el("code", {}, path)));
  if (op.summary) section.append(el("p", {}, op.summary));
  if (op.description) section.append(el("p", { class: "muted" }, op.description));
  const params = op.parameters || [];
  if (params.length) {
    const table = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"), el("th", {}, "type")));
    for (const p of params) table.append(el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in), el("td", {}, typeOf(spec, p.schema))));
    section.append(table);
  }
  const body = op.requestBody && op.requestBody.content;
  if (body) {
    const [type, content] = Object.entries(body)[0];
    section.append(el("p", {}, `Body (${type}):`), fieldsTable(spec, content.schema));
  }
  const codes = Object.entries(op.responses || {}).map(([code, r]) => `${code} ${r.description || ""}`);
  section.append(el("p", { class: "muted" }, "Responses: " + codes.join(" · ")));
  return section;
}

fetch("/openapi.json").then((r) => r.json()).then((spec) => {
  const main = document.getElementById("endpoints");
  main.replaceChildren(el("p", {}, `${spec.info.title} ${spec.info.version}: ${spec.info.description || ""}`));
  for (const [path, methods] of Object.entries(spec.paths))
    for (const [method, op] of Object.entries(methods)) main.append(endpoint(spec, path, method, op));
  main.append(el("h2", {}, "Example"), el("pre", {}, 'curl -s -X POST http://127.0.0.1:7860/api/v1/jobs \\\n  -H "Content-Type: application/json" \\\n  -d \'{"prompt": "a red circle above a blue square", "steps": 20, "seed": 0}\''));
}).catch((error) => { document.getElementById("endpoints").textContent = `Could not load /openapi.json: ${error}`; });
