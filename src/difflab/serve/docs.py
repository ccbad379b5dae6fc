"""The API's reference page at ``/docs``: the OpenAPI document written out as plain HTML on the
server (FastAPI's Swagger UI loads its script from a CDN, and the page must work offline)."""

from __future__ import annotations

from html import escape
from typing import Any

METHODS = ("get", "post", "put", "delete")
BOUNDS = ("minimum", "maximum", "maxLength", "pattern")
STYLE = ("body{font:14px/1.45 system-ui,sans-serif;max-width:900px;margin:24px auto;color:#1d2330}"
         "h2{font-size:15px;margin:18px 0 4px}h2 span{color:#2f6fde}"
         "code{background:#f1f3f6;padding:1px 4px;border-radius:4px}"
         "section{border-bottom:1px solid #dde1e8;padding-bottom:8px}")


def _field(field: dict[str, Any]) -> str:
    """A field's type(s) and bounds, e.g. ``integer | null (minimum 1, maximum 16)``."""
    options = field.get("anyOf", [field])
    kinds = [o.get("type", "") for o in options]
    bounds = [f"{k} {o[k]}" for o in options for k in BOUNDS if k in o]
    return " | ".join(k for k in kinds if k) + (f" ({', '.join(bounds)})" if bounds else "")


def _body_fields(schema: dict[str, Any], components: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(name, type and bounds, description) of a request body's fields."""
    if "$ref" in schema:
        schema = components.get(schema["$ref"].rsplit("/", 1)[-1], {})
    return [(name, _field(f), f.get("description", "")) for name, f in schema.get("properties", {}).items()]


def _route(method: str, path: str, op: dict[str, Any], components: dict[str, Any]) -> str:
    fields = [(p["name"], f"{p.get('in', '')}: {_field(p.get('schema', {}))}", p.get("description", ""))
              for p in op.get("parameters", [])]
    for content in op.get("requestBody", {}).get("content", {}).values():
        fields += _body_fields(content.get("schema", {}), components)
    items = "".join(f"<li><code>{escape(n)}</code> <i>{escape(k)}</i> {escape(d)}</li>" for n, k, d in fields)
    return (f"<section><h2><span>{method.upper()}</span> <code>{escape(path)}</code></h2>"
            f"<p>{escape(op.get('summary', ''))}</p>" + (f"<ul>{items}</ul>" if items else "") + "</section>")


def api_page(spec: dict[str, Any]) -> str:
    """Every route of ``spec`` (an OpenAPI document): method, path, summary, parameters, body."""
    components = spec.get("components", {}).get("schemas", {})
    routes = [_route(method, path, ops[method], components)
              for path, ops in spec.get("paths", {}).items() for method in METHODS if method in ops]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>difflab API</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(spec.get('info', {}).get('title', ''))} API</h1>"
            "<p>The OpenAPI document: <a href='/openapi.json'>/openapi.json</a>. Errors are JSON "
            "<code>{\"detail\": \"one line\"}</code>; a 422 names the field and its bound; a 503 comes "
            "with Retry-After.</p>" + "".join(routes) + "</body></html>")
