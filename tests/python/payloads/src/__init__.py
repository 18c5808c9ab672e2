"""Test payloads for beamflow's dranspose compatibility, written in the shape MAX IV's payload
repositories use: a `src` package run from its folder, `src.worker:ImagingWorker` with
`src.reducer:ImagingReducer`, and `src.raising:RaisingWorker` with `src.raising:RaisingReducer`.
"""
