"""Where runs are driven: the Ray seam (backend, the only module that imports ray), a
round's driver and its tracker, the lease that says who owns a sweep, the executors
(embedded / cluster / Ray Jobs) and refine, which runs more widths into a sweep."""
