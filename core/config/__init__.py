"""General configuration machinery, for every config file the product reads (agent, collector, and those to come).

- `loader`: YAML read within a budget, keeping the line of every key and item (`read_yaml`, `LocatedYaml`);
- `issues`: one problem as `file:line: key.path: message` (`ConfigIssue`, `ConfigError`), did-you-mean;
- `validation`: pydantic errors turned into such issues (`validate_model`), `*_file` paths (`find_file`);
- `types`: the general value types (durations, sizes, host names, slugs, `StrictModel`).

Nothing here knows what an agent or a collector is. Import from the submodules (this package imports none of
them, so a module that needs only `types` does not pay for the YAML loader).
"""
