#!/usr/bin/env python3
"""Helm and manifest checks for the Rust tests in tests/tests/helm_*.rs and manifests_*.rs.

Run with the test virtualenv's python (LTS_TEST_PYTHON, printed by
scripts/setup-test-deps.sh), which has helm-python-sdk, kubernetes-validate, jsonschema and
PyYAML. Every subcommand prints what it checked and exits non-zero with a readable message on
the first kind of failure:

  versions                         the Kubernetes versions to validate against: 1.30.0 and the
                                   newest one kubernetes-validate knows
  lint CHART [--values F]          helm lint --strict (warnings fail too; "info" does not)
  render CHART --out DIR [--values F] [--name N] [--namespace NS]
                                   render through the Helm SDK; writes one file per object:
                                   DIR/k8s/*.yaml (built-in kinds), DIR/custom/*.yaml (lts.io),
                                   DIR/objects.json (all of them), DIR/NOTES.txt,
                                   DIR/crds/*.yaml (the chart's crds/)
  split --out DIR FILE...          like render's output, for plain manifest files
  reject CHART --values F          the values must fail the chart's values.schema.json, both in
                                   validate_schema and in render; prints Helm's message
  crs --crds DIR FILE...           validate custom resources against the openAPIV3Schema of
                                   the CRDs in DIR (structural-schema extensions included)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


# --- versions ---------------------------------------------------------------------------


def cmd_versions(_args: argparse.Namespace) -> None:
    import kubernetes_validate.utils as kv

    print(f"1.30.0 {kv.latest_version()}")


# --- helm ---------------------------------------------------------------------------------


def load_values(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def cmd_lint(args: argparse.Namespace) -> None:
    import helm_python as helm

    report = helm.lint(args.chart, load_values(args.values), strict=True)
    severities = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    bad = []
    for m in report.get("messages", []):
        line = f"[{severities.get(m['severity'], m['severity'])}] {m['path']}: {m['error']}"
        print(line)
        if m["severity"] != 1:
            bad.append(line)
    bad += [f"[ERROR] {e}" for e in report.get("errors", []) if f"{e}" not in "".join(bad)]
    if bad or report.get("total_charts_linted") != 1:
        fail(f"helm lint {args.chart} (values: {args.values or 'defaults'}):\n" + "\n".join(bad))
    print(f"lint ok: {args.chart} (values: {args.values or 'defaults'})")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def cmd_render(args: argparse.Namespace) -> None:
    import helm_python as helm

    chart = helm.Chart.load(args.chart)
    values = load_values(args.values)
    try:
        rendered = chart.render(values, name=args.name, namespace=args.namespace)
    except helm.HelmError as e:
        fail(f"render {args.chart} (values: {args.values or 'defaults'}): {e}")
    out = Path(args.out)
    docs = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            out.mkdir(parents=True, exist_ok=True)
            (out / "NOTES.txt").write_text(text)
            continue
        docs += [(template, i, doc) for i, doc in enumerate(yaml.safe_load_all(text)) if doc]
    count = write_objects(docs, out)
    (out / "crds").mkdir(parents=True, exist_ok=True)
    for crd in chart.crds:
        (out / "crds" / Path(crd["filename"]).name).write_text(crd["data"])
    print(f"rendered {count} objects from {args.chart} (values: {args.values or 'defaults'})")


def write_objects(docs: list[tuple[str, int, dict[str, Any]]], out: Path) -> int:
    """Writes each object to out/k8s (built-in kinds) or out/custom (lts.io), one per file."""
    for sub in ("k8s", "custom"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    names: set[tuple[str, str, str, str]] = set()
    for origin, i, doc in docs:
        for field in ("apiVersion", "kind", "metadata"):
            if field not in doc:
                fail(f"{origin} document {i}: no {field}")
        meta = doc["metadata"]
        key = (doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta.get("name", ""))
        if key in names:
            fail(f"{origin}: duplicate object {key}")
        names.add(key)
        group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
        sub = "custom" if group == "lts.io" else "k8s"
        name = slug(f"{Path(origin).stem}-{i}-{doc['kind']}-{meta.get('name', '')}")
        (out / sub / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (out / "objects.json").write_text(json.dumps([d for _, _, d in docs], indent=1))
    return len(docs)


def cmd_split(args: argparse.Namespace) -> None:
    docs = []
    for file in args.files:
        docs += [(file, i, d) for i, d in enumerate(yaml.safe_load_all(Path(file).read_text())) if d]
    count = write_objects(docs, Path(args.out))
    print(f"split {count} objects from {len(args.files)} files")


def cmd_reject(args: argparse.Namespace) -> None:
    import helm_python as helm

    chart = helm.Chart.load(args.chart)
    values = load_values(args.values)
    try:
        chart.validate_schema(values)
    except helm.HelmValuesError as e:
        print(f"validate_schema rejected {args.values}: {e}")
    else:
        fail(f"values.schema.json accepted {args.values}")
    try:
        chart.render(values, name="lts", namespace="lts")
    except helm.HelmValuesError as e:
        print(f"render rejected {args.values}: {e}")
    else:
        fail(f"render accepted {args.values}")


# --- custom resources against their CRDs ------------------------------------------------


def to_jsonschema(node: Any) -> Any:
    """A Kubernetes structural schema as a JSON schema with the API server's semantics:
    unknown fields are errors (kubectl's default strict field validation) unless
    x-kubernetes-preserve-unknown-fields, int-or-string accepts both, nullable accepts null,
    embedded resources carry apiVersion/kind/metadata."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    s = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    for key in ("properties", "patternProperties"):
        if key in node:
            s[key] = {k: to_jsonschema(v) for k, v in node[key].items()}
    if node.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-embedded-resource"):
        props = s.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        s["additionalProperties"] = False
    if node.get("nullable"):
        s.pop("nullable", None)
        t = s.get("type")
        if isinstance(t, str):
            s["type"] = [t, "null"]
    return s


def format_checker():
    import jsonschema

    checker = jsonschema.FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        if not re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", value):
            raise ValueError(f"{value!r} is not an RFC 3339 date-time")
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True

    return checker


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def load_crds(directory: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → the served version's openAPIV3Schema."""
    schemas = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served", False):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schemas[key] = version["schema"]["openAPIV3Schema"]
    if not schemas:
        fail(f"no CustomResourceDefinitions in {directory}")
    return schemas


def cmd_crs(args: argparse.Namespace) -> None:
    import jsonschema

    crds = load_crds(args.crds)
    checker = format_checker()
    problems = []
    checked = 0
    for file in args.files:
        for i, doc in enumerate(yaml.safe_load_all(Path(file).read_text())):
            if not doc:
                continue
            where = f"{file} document {i} ({doc.get('kind')}/{doc.get('metadata', {}).get('name')})"
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key not in crds:
                problems.append(f"{where}: no served CRD for {key[0]} {key[1]}")
                continue
            name = doc.get("metadata", {}).get("name", "")
            if not DNS_SUBDOMAIN.match(name) or len(name) > 253:
                problems.append(f"{where}: metadata.name {name!r} is not a DNS subdomain")
            schema = to_jsonschema(copy.deepcopy(crds[key]))
            # metadata is validated by the API server itself, not by the CRD schema.
            schema.setdefault("properties", {})["metadata"] = {"type": "object"}
            schema["properties"].setdefault("apiVersion", {"type": "string"})
            schema["properties"].setdefault("kind", {"type": "string"})
            validator = jsonschema.Draft7Validator(schema, format_checker=checker)
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
            for e in errors:
                path = ".".join(str(p) for p in e.path) or "(root)"
                problems.append(f"{where}: {path}: {e.message}")
            if not errors:
                print(f"ok {where} against {key[0]} {key[1]}")
            checked += 1
    if problems:
        fail("custom resources do not match their CRDs:\n" + "\n".join(problems))
    if checked == 0:
        fail("no custom resources to check")
    print(f"{checked} custom resources match their CRD schemas")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("versions").set_defaults(func=cmd_versions)
    p = sub.add_parser("lint")
    p.add_argument("chart")
    p.add_argument("--values")
    p.set_defaults(func=cmd_lint)
    p = sub.add_parser("render")
    p.add_argument("chart")
    p.add_argument("--out", required=True)
    p.add_argument("--values")
    p.add_argument("--name", default="lts")
    p.add_argument("--namespace", default="lts-system")
    p.set_defaults(func=cmd_render)
    p = sub.add_parser("split")
    p.add_argument("--out", required=True)
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_split)
    p = sub.add_parser("reject")
    p.add_argument("chart")
    p.add_argument("--values", required=True)
    p.set_defaults(func=cmd_reject)
    p = sub.add_parser("crs")
    p.add_argument("--crds", required=True)
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_crs)
    args = parser.parse_args()
    os.environ.setdefault("HELM_NO_PLUGINS", "1")
    args.func(args)


if __name__ == "__main__":
    main()
