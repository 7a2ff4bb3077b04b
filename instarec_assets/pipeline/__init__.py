"""Running the pipeline from the command line: landing a batch, materialising a partition, reporting."""
