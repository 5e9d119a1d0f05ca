"""IQA data: database readers, input checks, splits, transforms, datasets, data modules, the demo database."""
