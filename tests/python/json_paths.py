"""Follows an HDF5 path of beamflow's state into its JSON view, for the checkers that compare
the two (h5pyd_browse.py, nexus_check.py)."""


def step(node, part):
    """One part of the path: a key, a list's index, or a column of a list of rows (a table
    given as rows, as a quad scan's steps, is a group of its columns in HDF5)."""
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list):
        if part.isdigit():
            return node[int(part)]
        return [row.get(part) if isinstance(row, dict) else None for row in node]
    return None
