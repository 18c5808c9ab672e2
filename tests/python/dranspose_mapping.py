#!/usr/bin/env python3
"""Answer, with dranspose 0.2.0's own MappingSequence, what beamflow's mapping module answers.

usage: dranspose_mapping.py ALL_WRAP < sequence.json
Prints {"total_events", "min_workers", "streams", "tags", "sequence"} as JSON, or {"error": ...}
when dranspose cannot use the sequence.
"""
import json
import sys

from dranspose.mapping import MappingSequence

body = json.load(sys.stdin)
try:
    m = MappingSequence(parts=body["parts"], sequence=list(body["sequence"]), add_start_end=sys.argv[1] == "1")
except Exception as e:  # noqa: BLE001 - any rejection is the answer
    json.dump({"error": repr(e)}, sys.stdout)
    sys.exit(0)
json.dump({"total_events": m.len(), "min_workers": m.min_workers(), "streams": sorted(m.all_streams),
           "tags": sorted(m.all_tags), "sequence": m.sequence}, sys.stdout)
