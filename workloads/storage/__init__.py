"""Moved to `stepscope.storage` (issue 17): the store and the Parquet schema are not workloads.

This alias keeps `stepscope.workloads.storage` and its modules (`schema`, `store`, `layout`)
importing, as the very same module objects, with a DeprecationWarning; it goes in a later
release. Import `stepscope.storage` instead.
"""

import sys
import warnings

from stepscope.storage import layout, schema, store

warnings.warn("stepscope.workloads.storage moved to stepscope.storage; import it from there",
              DeprecationWarning, stacklevel=2)
for _module in (layout, schema, store):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module
