#!/usr/bin/env python3
"""Lints the Helm chart with Helm's own lint (the helm-sdkpy wheel: Helm v4's library through
ctypes), once per values file. Helm's lint takes no values file, so each run lints a copy of the
chart whose values.yaml is the chart's defaults merged with the file (Helm's merge: maps key by
key, null deletes), written as JSON (valid YAML).

usage: helm_lint.py CHART_DIR [VALUES.yaml ...]   (no file: the defaults)
Prints Helm's messages; exits 1 on any warning or error.
"""
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

import helm_sdkpy
import yaml


def merge(dst, src):
    for key, value in src.items():
        if value is None:
            dst.pop(key, None)
        elif isinstance(value, dict) and isinstance(dst.get(key), dict):
            merge(dst[key], value)
        else:
            dst[key] = value
    return dst


def main():
    chart = Path(sys.argv[1])
    files = sys.argv[2:] or [None]
    failed = False
    for values_file in files:
        with tempfile.TemporaryDirectory() as directory:
            copy = Path(directory) / chart.name
            shutil.copytree(chart, copy)
            values = yaml.safe_load((chart / "values.yaml").read_text()) or {}
            if values_file:
                merge(values, yaml.safe_load(Path(values_file).read_text()) or {})
            (copy / "values.yaml").write_text(json.dumps(values, indent=1))
            lint = helm_sdkpy.Lint(helm_sdkpy.Configuration())
            result = asyncio.run(lint.run(str(copy)))
        messages = result.get("Messages") or []
        # Helm's severities: 1 info, 2 warning, 3 error.
        bad = [m for m in messages if m.get("Severity", 0) >= 2]
        print(f"{values_file or 'default values'}: {len(messages)} messages, "
              f"{len(bad)} warnings or errors, Errors: {result.get('Errors')}")
        for message in messages:
            print("  ", json.dumps(message))
        failed |= bool(bad) or bool(result.get("Errors"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
