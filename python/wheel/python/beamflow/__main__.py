"""`python -m beamflow ...`: the same as the `beamflow` console script."""

from beamflow import main

main()
