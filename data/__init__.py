"""Data: the Zarr episode store, the torch dataset, normalizer statistics, converters.

Every module here reads or writes the store, so the package needs the `data` extra (zarr and
its codecs); without it, importing any of it raises one MissingExtraError naming the extra.
The robot side (drivers, safety, the policy client) never imports this package.
"""

from tether.core.optional import require_extra

require_extra(__name__, "data")
