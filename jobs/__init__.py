"""The pipeline: the RQ jobs, callback delivery, one client per provider and the record store."""
