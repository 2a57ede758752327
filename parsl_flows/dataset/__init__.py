"""Map results as labelled data: xarray Datasets, netCDF files and tables of input samples.

A finished map is a folder of element files.  This module turns it into an
:class:`xarray.Dataset` whose dimensions are the map's indices, whose coordinates are the
values the map swept over, and which carries, for every output ``<name>``:

- ``<name>``: numeric when every present element is a number (or a numeric array of one
  shape, which adds the dimensions ``<name>_dim_0``, ...), object-valued otherwise;
- ``<name>_mask``: True where the element is missing (failed, or never submitted);

and for every map step ``<step>_error`` (``"ValueError: ..."``, empty where none; cut
after ``MAX_ERROR_BYTES``),
``<step>_attempts`` (how many attempts each element took; 0 if never submitted) and its
provenance (``parsl_flows.provenance``): ``<step>_seconds``, ``<step>_host``,
``<step>_job``, ``<step>_attempt`` and ``<step>_peak_rss``, not recorded (NaN, "", 0)
where the engine never heard of the element.

Dimensions follow the data: ``map_(get_charge, "electrostatics[i, j] -> charge[i, j]")``
over the output of ``"V_left[a], V_right[b] -> electrostatics[a, b]"`` lies on ``a`` and
``b``, with the ``V_left`` and ``V_right`` coordinates, and in :func:`run_dataset` every
map over the same input axis shares its dimension.  A dimension that cannot be shared
keeps a name of its own: the ``v`` of ``"p[u], q[v] -> r[u, v]"`` when ``p`` and ``q``
both lie on one dimension, or an ``i`` whose letter an earlier dimension took (it
becomes ``<step>_i``).  Inputs that are not 1-D numbers or text give positions.

Missing floats are NaN; missing integers and booleans hold 0 and False, so read them
through their mask (``ds.n.where(~ds.n_mask)``).  Object-valued outputs are read lazily,
an element file when the element is asked for; numeric ones are read at once, by several
threads (unless bigger than ``MAX_NUMERIC_BYTES`` in all: those stay lazy objects).
:func:`write_step_dataset` stores the numeric part as ``dataset.nc``, which any netCDF
reader opens; object-valued outputs stay in their pickles and the file names them.
The file, and the Dataset, follow the CF conventions (CF-1.10: :mod:`.cf` says how):
a ``long_name`` on every variable, the user's ``units`` (``@step(attrs=...)``, a swept
``xarray.DataArray``'s attributes), masks as flag variables, texts as characters.

>>> import numpy as np
>>> ds = array_to_xarray(np.ma.masked_array([1.5, 2.5, 3.5], mask=[0, 1, 0]), name="y")
>>> ds.y.values.tolist(), ds.y_mask.values.tolist()
([1.5, nan, 3.5], [False, True, False])
>>> float(ds.y.where(~ds.y_mask).mean())
2.5
"""

from ..element_folders import load_elements
from .building import (
    array_to_xarray,
    run_dataset,
    step_dataset,
    write_run_dataset,
    write_step_dataset,
)
from .netcdf import DATASET_FILE, NETCDF_LOCK
from .reading import MAX_NUMERIC_BYTES
from .samples import input_samples

__all__ = [
    "DATASET_FILE",
    "MAX_NUMERIC_BYTES",
    "NETCDF_LOCK",
    "array_to_xarray",
    "input_samples",
    "load_elements",
    "run_dataset",
    "step_dataset",
    "write_run_dataset",
    "write_step_dataset",
]
