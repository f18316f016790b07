"""Drives Helm v4's SDK (PyPI helm-python-sdk; no helm binary) for the tests.

Reads one JSON command on stdin, prints one JSON answer on stdout:
  {"op": "lint", "chart": PATH, "values": {...}}            -> the lint report
  {"op": "validate", "chart": PATH, "values": {...}}         -> {} or {"error": MESSAGE}
  {"op": "render", "chart": PATH, "values": {...}, "name": N, "namespace": NS}
                                                             -> {template path: manifest}
  {"op": "install"|"upgrade", "chart": PATH, "values": {...}, "name": N,
   "namespace": NS, "kubeconfig": PATH}                      -> the release (with manifest)
  {"op": "uninstall", "name": N, "namespace": NS, "kubeconfig": PATH}
Failures of the SDK come back as {"error": MESSAGE} with exit code 0, so that a test can
check a refusal's message; anything else exits non-zero.
"""

import json
import sys

import helm_python as helm


def main() -> None:
    cmd = json.load(sys.stdin)
    op = cmd["op"]
    values = cmd.get("values")
    try:
        if op == "lint":
            out = helm.lint(cmd["chart"], values, strict=True, namespace=cmd.get("namespace"))
        elif op == "validate":
            helm.Chart.load(cmd["chart"]).validate_schema(values)
            out = {}
        elif op == "render":
            out = helm.Chart.load(cmd["chart"]).render(
                values, name=cmd["name"], namespace=cmd["namespace"], is_install=True
            )
        elif op in ("install", "upgrade", "uninstall"):
            config = helm.Config(kubeconfig_path=cmd["kubeconfig"], namespace=cmd["namespace"])
            if op == "install":
                out = config.install(
                    cmd["chart"], cmd["name"], values, namespace=cmd["namespace"], timeout=120,
                    create_namespace=True,
                )
            elif op == "upgrade":
                out = config.upgrade(
                    cmd["chart"], cmd["name"], values, namespace=cmd["namespace"], timeout=120
                )
            else:
                out = config.uninstall(cmd["name"], timeout=120, wait="watcher")
        else:
            raise SystemExit(f"unknown op {op!r}")
    except helm.HelmError as e:
        out = {"error": f"{type(e).__name__}: {e}"}
    json.dump(out, sys.stdout, default=str)


if __name__ == "__main__":
    main()
