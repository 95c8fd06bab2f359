"""Data: the Zarr episode store, the torch dataset, normalizer statistics, converters."""
