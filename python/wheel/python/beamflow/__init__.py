"""beamflow in a Python environment: the `beamflow` command, whose `kind = "python"` payloads
run in this interpreter, with this environment's packages (numpy, h5py, dranspose...).

Run it as `beamflow ...` (the console script) or `python -m beamflow ...`.
"""

import logging
import os
import sys


def main() -> None:
    """The `beamflow` console script."""
    # Payloads log with `logging`, as under dranspose, whose LOG_LEVEL sets the level too.
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Tells beamflow which environment it runs in, so a command naming another one (`--python`,
    # or the activated one) is handed over to that one's beamflow, never run here.
    os.environ["BEAMFLOW_PYTHON_PREFIX"] = sys.prefix
    from beamflow import _native

    sys.exit(_native.main(["beamflow", *sys.argv[1:]]))
